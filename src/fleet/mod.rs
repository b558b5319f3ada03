//! Running one emperor per host with the truth in stores the users already operate: vassals from
//! PostgreSQL (`pg://`), routes published to Redis in beachhead's layout, and a front that renders nginx's
//! map from every host's routes. No home-made cluster: the stores are the only shared state, and a store
//! that goes away never stops a vassal.

pub mod beachhead;
pub mod front;
pub mod front_map;
pub mod pg;
pub mod publish;
mod store;
