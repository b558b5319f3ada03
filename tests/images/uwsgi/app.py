# The WSGI app of emperor-test/uwsgi (/app/app.py). It answers
#   hello from uwsgi-in-docker pid=<worker pid> cfg=<cfgver> [file=<first line of readfile>]
# where cfgver is the uWSGI option `cfgver` of the vassal's [uwsgi] section (a custom option: uWSGI keeps any
# option it does not know in uwsgi.opt), else the environment variable CFGVER, else "-"; and readfile, when set
# (option or env READFILE), names a file whose first line is appended, to show a mounted directory is visible.
import os

import uwsgi


def opt(name):
    v = uwsgi.opt.get(name)
    if isinstance(v, list):
        v = v[-1]
    if isinstance(v, bytes):
        v = v.decode()
    return v or os.environ.get(name.upper())


def application(env, start_response):
    body = 'hello from uwsgi-in-docker pid=%d cfg=%s' % (os.getpid(), opt('cfgver') or '-')
    path = opt('readfile')
    if path:
        with open(path) as f:
            body += ' file=%s' % f.readline().strip()
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [(body + '\n').encode()]
