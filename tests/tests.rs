//! Integration tests: the real `emperor` binary, real vassal processes (examples/testapp.rs and Debian's uWSGI),
//! temp dirs. One crate so the build happens once (style.md §9); the modules are in `cases/`, the harness in `util/`.

mod cases;
mod util;
