"""In-container agent: JSON requests on stdin, JSON events on stdout (one object per line).

Every request (op_*) and event this file sends is described in protocol.schema.json beside it, generated from the
server's schemas/agent.ts; the server's tests check every event they receive against it.

Runs as root with only SETUID, SETGID and KILL; every kernel runs as uid 1000 with no capabilities,
so user code can neither signal this process nor read its environment.
"""
import base64
import codecs
import collections
import ctypes
import errno
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import stat
import struct
import sys
import tempfile
import termios
import threading
import time

from egress_relay import pump  # the same byte pump as the egress relay (both in /opt/agent)

WORKSPACE = '/home/user'
AGENT_DIR = os.path.dirname(os.path.abspath(__file__))
USER_UID = 1000
GRACE_S = float(os.environ.get('KERNEL_KILL_GRACE_MS', '2000')) / 1000
DEFAULT_OUTPUT_CAP = 1024 * 1024
PRELOAD = os.environ.get('SANDBOX_PRELOAD', '')  # python modules imported before the kernel says it is ready
CHUNK = 256 * 1024
START_HOLD_S = 0.002  # how long a run's start event may wait to leave with what follows it
ENCODE = json.JSONEncoder(separators=(',', ':')).encode  # made once: json.dumps with options makes one per call
READ = 65536  # bytes per read: smaller than glibc's mmap threshold, so a read costs no mmap/munmap
DROP = ['setpriv', '--reuid', str(USER_UID), '--regid', str(USER_UID), '--clear-groups',
        '--inh-caps=-all', '--bounding-set=-all', '--']
COMMANDS = {
    'python': ['python3', '-u', os.path.join(AGENT_DIR, 'kernel_python.py')],
    'javascript': ['node', os.path.join(AGENT_DIR, 'kernel_node.js')],
    'shell': ['bash', '--noprofile', '--norc'],
    'r': ['Rscript', '--vanilla', os.path.join(AGENT_DIR, 'kernel_r.R')],
}
NPROC = int(os.environ.get('KERNEL_NPROC') or 0)  # under gVisor: the kernels' process limit (see container.ts)
PLOT_LIMIT = 20 * 1024 * 1024  # largest plot file a kernel may hand over


FLUSH_AT = 256 * 1024  # a channel's queued output is written at the end of each loop turn, or once this large
SOCKET_DIR = os.environ.get('AGENT_SOCKET_DIR', '')  # where the server's direct channel (a unix socket) is offered
SUSPEND_WAIT_S = 30  # how long a suspended agent waits for its checkpoint (or the word that it failed)


class Channel:
    """One server connection: the attach stream (stdin/stdout) or a connection to the agent's unix socket.

    Events are queued and written once per loop turn, so a run's start, output and end cost one write, not three.
    """
    def __init__(self, rfd, wfd, sock=None):
        self.rfd, self.wfd, self.sock = rfd, wfd, sock
        self.inbuf = b''
        self.out = []
        self.size = 0
        self.closed = False

    def queue(self, data):
        if self.closed:
            return
        self.out.append(data)
        self.size += len(data)
        if self.size >= FLUSH_AT:
            self.flush()

    def flush(self):
        if not self.out or self.closed:
            return
        data = b''.join(self.out)
        self.out, self.size = [], 0
        try:
            while data:
                data = data[os.write(self.wfd, data):]
        except OSError:
            if self.sock is None and not SOCKET_DIR:  # the attach stream broke: the server detached for good
                os._exit(0)
            self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            self.sock.close()
        if self in CHANNELS:
            CHANNELS.remove(self)
        for rid in [r for r, ch in ROUTES.items() if ch is self]:  # its follows and watches end with it
            ROUTES.pop(rid, None)
            if AGENT is not None:
                AGENT.forget(rid)


STDIO = Channel(0, 1)
CHANNELS = [STDIO]
ROUTES = {}  # request id -> the channel it came from, while the request is answered
AGENT = None  # the one Agent (a closing channel tells it which follows and watches end)


def emit(event):
    """Queue an event for the channel whose request it answers (events without an id go to every channel)."""
    line = (ENCODE(event) + '\n').encode()
    rid = event.get('id')
    if rid is None:
        for ch in list(CHANNELS):
            ch.queue(line)
    else:
        ROUTES.get(rid, STDIO).queue(line)


def flush_all():
    for ch in list(CHANNELS):
        ch.flush()


def read_chunks(fd):
    """What a non-blocking fd holds now, READ bytes at a time (under malloc's mmap threshold); b'' at its end.

    A read that comes back short means the pipe or socket is empty: no further read to learn so from EAGAIN.
    """
    while True:
        try:
            chunk = os.read(fd, READ)
        except BlockingIOError:
            return
        yield chunk
        if len(chunk) < READ:
            return


def read_available(fd):
    """All of read_chunks at once: None if nothing, b'' at the fd's end."""
    parts = list(read_chunks(fd))
    return b''.join(parts) if parts else None


def set_nonblocking(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class AsUser:
    """File work runs with the user's effective ids: the user's permissions apply, symlink tricks gain nothing."""
    def __enter__(self):
        os.setegid(USER_UID)
        os.seteuid(USER_UID)

    def __exit__(self, *exc):
        os.seteuid(0)
        os.setegid(0)


def user_env(extra):
    env = {
        'PATH': '/usr/local/bin:/usr/bin:/bin', 'HOME': WORKSPACE, 'USER': 'user', 'LANG': 'C.UTF-8',
        'PYTHONUNBUFFERED': '1', 'PYTHONDONTWRITEBYTECODE': '1', 'PYTHONPATH': AGENT_DIR,
        'MPLBACKEND': 'module://mpl_backend', 'MPLCONFIGDIR': WORKSPACE + '/.config/matplotlib',
        'TMPDIR': '/tmp', 'TERM': 'dumb',
    }
    env.update(extra)
    return env


class Kernel:
    def __init__(self, language, env, key=None, cwd=None):
        self.language = language
        self.key = key or language  # a language's default kernel, or a named context's (`python:ctx1`)
        self.cwd = cwd or WORKSPACE
        with AsUser():  # owned by the kernel's uid, so a kernel can reopen its own ends through /proc (R does)
            ctrl_r, self.ctrl_w = os.pipe()
            self.ev_r, ev_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_env = user_env(env)
        if language == 'python' and PRELOAD:
            child_env['KERNEL_PRELOAD'] = PRELOAD
        child_env['KERNEL_EVENT_FD'] = str(ev_w)
        child_env['KERNEL_CTRL_FD'] = str(ctrl_r)
        stdin = ctrl_r if language == 'shell' else os.open('/dev/null', os.O_RDONLY)
        self.pid = os.fork()
        if self.pid == 0:  # child: own session, so signals reach its whole process group
            try:
                os.setsid()
                with AsUser():  # the workspace is the user's (0700): root without CAP_DAC_OVERRIDE enters it as the user (gVisor enforces this)
                    try:
                        os.chdir(self.cwd)
                    except OSError:
                        os.chdir(WORKSPACE)
                os.dup2(stdin, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                keep = {0, 1, 2, ctrl_r, ev_w}
                for fd in os.listdir('/proc/self/fd'):
                    if int(fd) not in keep:
                        try:
                            os.close(int(fd))
                        except OSError:
                            pass
                for fd in (ctrl_r, ev_w):
                    os.set_inheritable(fd, True)
                if NPROC:
                    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
                os.execvpe(DROP[0], DROP + COMMANDS[language], child_env)
            finally:
                os._exit(127)
        for fd in (ctrl_r, ev_w, out_w, err_w):
            os.close(fd)
        if stdin != ctrl_r:
            os.close(stdin)
        self.streams = {out_r: 'stdout', err_r: 'stderr'}
        self.decoders = {out_r: codecs.getincrementaldecoder('utf-8')('replace'),
                         err_r: codecs.getincrementaldecoder('utf-8')('replace')}
        for fd in (out_r, err_r, self.ev_r):
            set_nonblocking(fd)
        self.ev_buf = b''
        self.status = None
        self.ready = language != 'python'
        self.alive = True

    def fds(self):
        return list(self.streams) + [self.ev_r]

    def send(self, execution):
        if self.language == 'shell':
            quoted = execution['code'].replace('\\', '\\\\').replace("'", "\\'")
            line = ("eval $'%s' </dev/null; printf '{\"type\":\"end\",\"exit_code\":%%d}\\n' $? >&$KERNEL_EVENT_FD\n"
                    % quoted.replace('\n', '\\n'))
        elif self.language == 'r':  # base R has no JSON parser: the code's length in bytes, then the code
            code = execution['code'].encode()
            line = None
            data = b'%d\n' % len(code) + code
        else:
            line = json.dumps({'code': execution['code']}) + '\n'
        if line is not None:
            data = line.encode()
        while data:  # the kernel reads as it goes; a short blocking write loop is fine here
            n = os.write(self.ctrl_w, data)
            data = data[n:]

    def signal(self, sig):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            # Killed a moment after its fork, the kernel may not have its own process group yet (setsid): without this
            # the SIGKILL went nowhere and kill() waited for it forever (a restart under a running cell wedged the agent).
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self):
        """SIGKILL the kernel's whole process group, reap the leader, wait briefly for the rest to go."""
        self.signal(signal.SIGKILL)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        for _ in range(50):  # orphans are reaped by init; killpg fails once none is left
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.01)
        self.close()

    def reap(self):
        """The exit status once the kernel has exited (kept, since a pid can be waited for only once), else None."""
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = status
            except ChildProcessError:
                pass
        return self.status

    def close(self):
        if not self.alive:
            return
        self.alive = False
        for fd in self.fds() + [self.ctrl_w]:
            try:
                os.close(fd)
            except OSError:
                pass


# --- workspace primitives: processes, terminals, watchers, ports (see services/sandbox/workspace.ts) ---------
PROC_KEEP_EXITED = 64  # finished processes kept in the table (their exit code and output) for late readers
EXIT_DRAIN_S = 0.05  # after a process exits, how long its output may still arrive (a PTY flushes late)
STDIN_LIMIT = 1024 * 1024  # input written to a process that has not read it yet
SIGNALS = {name: getattr(signal, name) for name in ('SIGINT', 'SIGTERM', 'SIGKILL', 'SIGHUP', 'SIGQUIT', 'SIGUSR1',
                                                      'SIGUSR2', 'SIGSTOP', 'SIGCONT', 'SIGWINCH')}


class Process:
    """A command started by spawn: its output kept (the last `keep` bytes) for followers, who read it by offset."""
    def __init__(self, pid, cmd, tag, fds, stdin_fd, master, keep, timeout):
        self.pid, self.cmd, self.tag = pid, cmd, tag
        self.fds = fds  # fd -> stream name ('stdout', 'stderr', or 'pty')
        self.stdin_fd = stdin_fd
        self.master = master  # the PTY's master fd, or None
        self.keep = keep
        self.started = time.time()
        self.began = time.monotonic()
        self.chunks = collections.deque()  # (offset, stream, bytes)
        self.start = 0  # offset of the oldest byte kept
        self.end = 0  # offset after the newest byte
        self.followers = {}  # follow request id -> [bytes it may still get, or None]
        self.status = None  # the wait status once reaped
        self.exit = None  # the exit event's fields once finished
        self.drain_until = None
        self.deadline = time.monotonic() + timeout / 1000 if timeout else None
        self.kill_at = None
        self.timed_out = False
        self.pending_in = b''
        self.close_stdin_after = False

    @property
    def running(self):
        return self.exit is None

    def record(self, stream, data):
        self.chunks.append((self.end, stream, data))
        self.end += len(data)
        while self.end - self.start > self.keep and self.chunks:
            off, st, old = self.chunks[0]
            drop = min(len(old), self.end - self.start - self.keep)
            if drop >= len(old):
                self.chunks.popleft()
            else:
                self.chunks[0] = (off + drop, st, old[drop:])
            self.start += drop

    def since(self, offset):
        """The kept output from `offset` on, as (offset, stream, bytes)."""
        for off, st, data in self.chunks:
            if off + len(data) <= offset:
                continue
            cut = max(0, offset - off)
            yield off + cut, st, data[cut:]

    def view(self):
        v = {'pid': self.pid, 'cmd': self.cmd, 'tag': self.tag, 'pty': self.master is not None,
             'started_at': self.started, 'running': self.running, 'output_bytes': self.end}
        if self.exit is not None:
            v.update(self.exit)
        return v


_libc = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP = 24


class _CapHeader(ctypes.Structure):
    _fields_ = [('version', ctypes.c_uint32), ('pid', ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [('effective', ctypes.c_uint32), ('permitted', ctypes.c_uint32), ('inheritable', ctypes.c_uint32)]


def become_user():
    """In a new child, before its exec: what `setpriv` (DROP) does for the kernels, without setpriv's own exec (a
    millisecond of every command). The bounding set is lowered where the agent may (it lacks CAP_SETPCAP in our
    containers, and then, as with setpriv, the container's own three stay: no-new-privileges keeps them unusable);
    the ids then drop every permitted and effective capability, and capset clears the inheritable ones."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() in (errno.EINVAL, errno.EPERM):
            break
    os.setgroups([])
    os.setresgid(USER_UID, USER_UID, USER_UID)
    os.setresuid(USER_UID, USER_UID, USER_UID)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), 'capset')


IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x4, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x400, 0x800, 0x4000, 0x8000, 0x40000000
WATCH_MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
WATCH_DIRS = 4096  # directories one recursive watch follows
# A name moved away is a rename; a name moved into place appears, as inotify's users (fsnotify, E2B's envd) report it.
KINDS = ((IN_CREATE, 'create'), (IN_MODIFY, 'write'), (IN_DELETE, 'remove'), (IN_MOVED_FROM, 'rename'),
         (IN_MOVED_TO, 'create'), (IN_ATTRIB, 'chmod'))


class Watch:
    """One watched directory (and with `recursive` its subdirectories): an inotify instance read by the main loop."""
    def __init__(self, rid, root, rel, recursive):
        self.rid, self.root, self.rel, self.recursive = rid, root, rel, recursive
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, 'inotify: %s' % os.strerror(e))
        self.dirs = {}  # watch descriptor -> directory relative to the workspace
        self.add(root, rel)
        if recursive:
            for dirpath, dirnames, _ in os.walk(root):
                for name in dirnames:
                    full = os.path.join(dirpath, name)
                    if not os.path.islink(full):
                        self.add(full, os.path.relpath(full, WORKSPACE))

    def add(self, full, rel):
        if len(self.dirs) >= WATCH_DIRS:
            return
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(full), WATCH_MASK)
        if wd < 0:
            e = ctypes.get_errno()
            if not self.dirs:  # the root itself: the request fails
                os.close(self.fd)
                raise OSError(e, os.strerror(e))
            return
        self.dirs[wd] = '' if rel == '.' else rel

    def events(self):
        """What happened since the last read, as fs_event fields (repeats within one read folded)."""
        data = read_available(self.fd) or b''
        seen, out, pos = set(), [], 0
        while pos + 16 <= len(data):
            wd, mask, _cookie, length = struct.unpack_from('iIII', data, pos)
            name = data[pos + 16:pos + 16 + length].rstrip(b'\0').decode(errors='replace')
            pos += 16 + length
            if mask & IN_Q_OVERFLOW:
                out.append({'kind': 'overflow', 'path': self.rel, 'is_dir': True})
                continue
            base = self.dirs.get(wd)
            if base is None:
                continue
            if mask & IN_IGNORED:
                self.dirs.pop(wd, None)
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                if base == ('' if self.rel == '.' else self.rel):
                    out.append({'kind': 'remove' if mask & IN_DELETE_SELF else 'rename', 'path': self.rel, 'is_dir': True})
                continue
            if name.startswith('.upload-'):  # an upload's file before it is renamed into place: ours, not the user's
                continue
            path = os.path.join(base, name) if base else name
            is_dir = bool(mask & IN_ISDIR)
            if is_dir and self.recursive and mask & (IN_CREATE | IN_MOVED_TO):
                with AsUser():
                    self.add(os.path.join(WORKSPACE, path), path)
            for bit, kind in KINDS:
                if mask & bit and (kind, path) not in seen:
                    seen.add((kind, path))
                    out.append({'kind': kind, 'path': path, 'is_dir': is_dir})
        return out

    def close(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


CA_BUNDLE = '/tmp/.egress-ca/ca-bundle.pem'
SYSTEM_CAS = '/etc/ssl/certs/ca-certificates.crt'


def write_ca_bundle(ca):
    """The system CAs plus the deployment's (the egress proxy signs the hosts whose requests it changes with it), where
    SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, PIP_CERT and NODE_EXTRA_CA_CERTS point: root's, read-only."""
    os.makedirs(os.path.dirname(CA_BUNDLE), mode=0o755, exist_ok=True)
    try:
        with open(SYSTEM_CAS) as f:
            system = f.read()
    except OSError:
        system = ''
    tmp = CA_BUNDLE + '.new'
    with open(tmp, 'w') as f:
        f.write(system.rstrip('\n') + '\n' + ca.strip() + '\n')
    os.chmod(tmp, 0o644)
    os.rename(tmp, CA_BUNDLE)


LIST_MAX = 10000
NAMES = {}


def name_of(table, ident):
    key = (table, ident)
    if key not in NAMES:
        try:
            import grp
            import pwd
            NAMES[key] = pwd.getpwuid(ident).pw_name if table == 'user' else grp.getgrgid(ident).gr_name
        except (KeyError, ImportError):
            NAMES[key] = str(ident)
    return NAMES[key]


def entry_info(full, name):
    """A workspace entry: its kind, size, mode bits, owner and group, and where a symlink points."""
    st = os.lstat(full)
    kind = 'symlink' if stat.S_ISLNK(st.st_mode) else 'directory' if stat.S_ISDIR(st.st_mode) else 'file'
    info = {'name': name, 'path': os.path.relpath(full, WORKSPACE), 'type': kind, 'size': st.st_size,
            'modified': st.st_mtime, 'mode': stat.S_IMODE(st.st_mode), 'permissions': stat.filemode(st.st_mode),
            'owner': name_of('user', st.st_uid), 'group': name_of('group', st.st_gid)}
    if kind == 'symlink':
        info['target'] = os.readlink(full)
    return info


def tasks_summary():
    """What holds the sandbox's pids: its processes and threads, by command."""
    counts = collections.Counter()
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/comm' % entry) as f:
                    counts[f.read().strip()] += len(os.listdir('/proc/%s/task' % entry))
            except OSError:
                pass
    return '%d processes and threads: %s' % (sum(counts.values()), ', '.join('%s %d' % c for c in counts.most_common(4)))


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def relay(a, b, done):
    """Copies bytes from socket a to socket b until a ends (egress_relay's pump: b's writing side is then ended)."""
    try:
        pump(a, b)
    finally:
        done()


class PortRelay:
    """A server connection turned into a byte pipe to a port inside the sandbox (two threads, one per direction)."""
    def __init__(self, sock, tcp, leftover):
        self.sock, self.tcp = sock, tcp
        self.left = 2
        self.lock = threading.Lock()
        if leftover:
            tcp.sendall(leftover)
        for a, b in ((sock, tcp), (tcp, sock)):
            threading.Thread(target=relay, args=(a, b, self.half_done), daemon=True).start()

    def half_done(self):
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self.close()

    def close(self):
        for s in (self.sock, self.tcp):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        RELAYS.discard(self)


RELAYS = set()


def open_port(port):
    """A connection to a port something listens on inside the sandbox (IPv4 loopback, then IPv6)."""
    last = None
    for family, addr in ((socket.AF_INET, ('127.0.0.1', port)), (socket.AF_INET6, ('::1', port))):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect(addr)
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError as e:
            s.close()
            last = e
    raise last


class Agent:
    def __init__(self):
        self.env = {}
        self.kernels = {}
        self.lost = set()  # languages whose kernel died between executions: the next run is told
        self.current = None  # the running execution
        self.count = 0
        self.writes = {}
        self.stop = False
        self.hold = None  # until when queued events wait for more (a run's start, for its first output or end)
        self.procs = {}  # pid -> Process (running, and the last PROC_KEEP_EXITED finished)
        self.follows = {}  # follow request id -> its Process
        self.watches = {}  # watch request id -> Watch
        self.wakeup_r = None  # readable when a child changed state (SIGCHLD)

    # --- kernels -----------------------------------------------------------------------------
    def kernel(self, language, key=None, cwd=None):
        key = key or language
        k = self.kernels.get(key)
        if k is None or not k.alive:
            k = Kernel(language, self.env, key, cwd if cwd is not None else (k.cwd if k is not None else None))
            self.kernels[key] = k
        return k

    def fd_owner(self):
        owners = {}
        for k in self.kernels.values():
            if k.alive:
                for fd in k.fds():
                    owners[fd] = k
        return owners

    def drain_output(self, k, fds=None):
        for fd, name in k.streams.items():
            if fds is not None and fd not in fds:
                continue
            try:
                for chunk in read_chunks(fd):
                    if chunk:
                        self.output(k, name, k.decoders[fd].decode(chunk))
            except OSError:
                pass  # a closed pipe: the kernel's end is read from its event pipe

    def output(self, k, name, text):
        cur = self.current
        if not text or cur is None or cur['kernel'] is not k:
            return  # output of background work between executions is dropped
        cur['bytes'] += len(text)
        if cur['bytes'] > cur['cap']:
            if not cur['truncated']:
                cur['truncated'] = True
                emit({'id': cur['id'], 'type': 'stderr',
                      'text': '\n[output truncated: more than %d bytes]\n' % cur['cap']})
            return
        emit({'id': cur['id'], 'type': name, 'text': text})

    def kernel_events(self, k):
        data = read_available(k.ev_r)
        if data is None:
            return
        if not data:
            self.drain_output(k)
            self.kernel_died(k)
            return
        lines = (k.ev_buf + data).split(b'\n')
        k.ev_buf = lines.pop()
        for line in lines:
            # The kernel flushes its output before each event: what these events follow is in the pipes now. Output
            # written between two events read in one go belongs before the second, so the pipes are read again.
            self.drain_output(k)
            if not k.alive:
                return
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.kernel_event(k, ev)

    def kernel_event(self, k, ev):
        kind = ev.get('type')
        if kind == 'display':
            if 'path' in ev:
                ev = self.plot_file(ev['path'])
            self.ack_after(k, ev)
            return
        self.dispatch_event(k, kind, ev)

    def plot_file(self, path):
        """A plot a kernel saved as a file (R's png device), as display data; read as the user, so a kernel can name no file it could not read itself."""
        try:
            with AsUser():
                fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                data = os.read(fd, PLOT_LIMIT + 1)
            finally:
                os.close(fd)
            if len(data) > PLOT_LIMIT or not data.startswith(b'\x89PNG'):
                raise ValueError('not a PNG under %d bytes' % PLOT_LIMIT)
            return {'type': 'display', 'data': {'image/png': base64.b64encode(data).decode()}}
        except (OSError, ValueError) as e:
            return {'type': 'display', 'data': {'text/plain': '[plot not readable: %s]' % e}}

    def ack_after(self, k, ev):
        """Forward a mid-run event, then let the kernel go on (it waits, so that its next output comes after)."""
        self.dispatch_event(k, 'display', ev)
        try:
            os.write(k.ctrl_w, b'\n')
        except OSError:
            pass

    def dispatch_event(self, k, kind, ev):
        if kind == 'ready':
            k.ready = True
            if k.key == 'python' and not self.current:
                emit({'type': 'ready'})
            return
        cur = self.current
        if cur is None or cur['kernel'] is not k:
            return
        if kind == 'running':
            cur['running'] = True
            if cur['sigint_pending']:
                cur['sigint_pending'] = False
                k.signal(signal.SIGINT)
            return
        if kind == 'error' and cur['interrupted'] == 'timeout' and ev.get('name') in ('KeyboardInterrupt', 'Interrupted'):
            ev = self.timeout_error(cur, state_lost=False)
        if kind == 'end':
            if cur['interrupted'] == 'timeout' and not cur['errored']:
                self.send_error(cur, self.timeout_error(cur, state_lost=False))
            status = 'error' if cur['errored'] or ev.get('status') == 'error' or ev.get('exit_code', 0) != 0 else 'ok'
            self.finish(cur, status, state_lost=False, exit_code=ev.get('exit_code'))
            return
        if kind == 'error':
            self.send_error(cur, ev)
            return
        ev['id'] = cur['id']
        emit(ev)

    def timeout_error(self, cur, state_lost):
        kept = 'its state was lost (kernel restarted)' if state_lost else 'interrupted, state kept'
        return {'type': 'error', 'name': 'TimeoutError', 'code': 'execution_timeout', 'state_lost': state_lost,
                'value': 'execution exceeded %d ms; %s' % (cur['timeout_ms'], kept), 'traceback': []}

    def send_error(self, cur, ev):
        cur['errored'] = True
        ev = dict(ev, id=cur['id'], type='error')
        ev.setdefault('traceback', [])
        emit(ev)

    def kill_strays(self, k):
        """After an interrupted run, end whatever the code left in the kernel's process group (a fork bomb's children)."""
        for _ in range(20):
            strays = []
            for entry in os.listdir('/proc'):
                if entry.isdigit() and int(entry) != k.pid:
                    try:
                        if os.getpgid(int(entry)) == k.pid:
                            strays.append(int(entry))
                    except OSError:
                        pass
            if not strays:
                return
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)

    def finish(self, cur, status, state_lost, exit_code=None):
        end = {'id': cur['id'], 'type': 'end', 'status': status, 'execution_count': cur['count'],
               'duration_ms': round((time.monotonic() - cur['started']) * 1000, 3),
               'state_lost': state_lost or cur.get('lost_before', False)}
        if exit_code is not None:
            end['exit_code'] = exit_code
        if cur['interrupted'] and cur['kernel'].alive:
            self.kill_strays(cur['kernel'])
        self.current = None
        emit(end)
        ROUTES.pop(cur['id'], None)

    def kernel_died(self, k):
        status = k.reap()
        for _ in range(20):
            if status is not None:
                break
            time.sleep(0.005)
            status = k.reap()
        k.kill()
        cur = self.current
        if cur is not None and cur['kernel'] is k:
            how = 'exited'
            if status is not None and os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                how = 'was killed by signal %d%s' % (sig, ' (out of memory?)' if sig == signal.SIGKILL else '')
            elif status is not None:
                how = 'exited with status %d' % os.WEXITSTATUS(status)
            if cur['interrupted'] == 'timeout':
                err = self.timeout_error(cur, state_lost=True)
            else:
                err = {'type': 'error', 'name': 'KernelDied', 'code': 'kernel_died', 'state_lost': True,
                       'value': 'the %s kernel %s; its state was lost and it will be restarted' % (k.language, how)}
            self.send_error(cur, err)
            self.finish(cur, 'error', state_lost=True)
        else:
            self.lost.add(k.key)
        if k.key == 'python':
            self.kernel('python')  # keep the default kernel warm

    # --- requests ----------------------------------------------------------------------------
    def handle(self, req, channel=STDIO):
        rid = req.get('id')
        op = req.get('op')
        ROUTES[rid] = channel
        self.hold = None  # only a run's start waits (op_execute sets it again)
        try:
            self.dispatch(rid, op, req)
        finally:
            # Answered already, unless it answers on: a run until its end, a follow or a watch until it is ended.
            if (self.current is None or self.current['id'] != rid) and rid not in self.follows and rid not in self.watches:
                ROUTES.pop(rid, None)

    def dispatch(self, rid, op, req):
        try:
            getattr(self, 'op_' + str(op), self.op_unknown)(rid, req)
        except OSError as e:
            code = {errno.ENOENT: 'file_not_found', errno.ENOSPC: 'disk_full', errno.EISDIR: 'is_a_directory',
                    errno.ENOTDIR: 'not_a_directory', errno.EFBIG: 'file_too_large'}.get(e.errno, 'os_error')
            emit({'id': rid, 'type': 'error', 'code': code, 'name': type(e).__name__, 'value': e.strerror or str(e)})
        except (ValueError, TypeError, KeyError) as e:  # a request with fields of the wrong kind
            self.fail(rid, 'bad_request', 'bad request: %s' % e)

    def op_unknown(self, rid, req):
        emit({'id': rid, 'type': 'error', 'code': 'bad_request', 'name': 'BadRequest',
              'value': 'unknown op %r' % req.get('op')})

    def op_ping(self, rid, req):
        emit({'id': rid, 'type': 'pong'})

    def op_env(self, rid, req):
        given = {str(k): str(v) for k, v in (req.get('env') or {}).items()}
        if req.get('merge'):
            # A change while the sandbox works (a new network policy): what starts from now on sees it.
            kept = {k: v for k, v in self.env.items() if k not in set(req.get('unset') or [])}
            self.env = dict(kept, **given)
            return emit({'id': rid, 'type': 'done'})
        self.env = given
        for k in list(self.kernels.values()):
            k.kill()
        self.kernels = {}
        self.kernel('python')
        emit({'id': rid, 'type': 'done'})

    def op_execute(self, rid, req):
        language = req.get('language', 'python')
        if language not in COMMANDS:
            return emit({'id': rid, 'type': 'error', 'code': 'bad_request', 'name': 'BadRequest',
                         'value': 'unknown language %r' % language})
        if self.current is not None:
            return emit({'id': rid, 'type': 'error', 'code': 'sandbox_busy', 'name': 'Busy',
                         'value': 'another execution is running'})
        key = req.get('kernel') or language
        k = self.kernels.get(key)
        if key != language and (k is None or k.language != language):
            return self.fail(rid, 'no_kernel', 'no %s context %r in this sandbox' % (language, key), 'NotFound')
        if k is not None and k.alive and k.reap() is not None:
            self.kernel_died(k)  # it died and its EOF is not read yet: restart it now, and say the state is lost
        k = self.kernel(language, key)
        self.count += 1
        timeout = float(req.get('timeout_ms') or 30000)
        now = time.monotonic()
        self.current = {'id': rid, 'kernel': k, 'count': self.count, 'started': now, 'timeout_ms': timeout,
                        'deadline': now + timeout / 1000, 'kill_at': None, 'interrupted': None,
                        'errored': False, 'bytes': 0, 'cap': int(req.get('max_output_bytes') or DEFAULT_OUTPUT_CAP),
                        'truncated': False,
                        # The python kernel says `running` once it holds the code: an interrupt before that waits for it
                        # (a SIGINT while it still read its pipe was taken for an idle one, and the run went on).
                        'running': language != 'python', 'sigint_pending': False}
        emit({'id': rid, 'type': 'start', 'execution_count': self.count})
        # Most runs end within a millisecond: the start then leaves in one write with the output and the end.
        self.hold = time.monotonic() + START_HOLD_S
        if key in self.lost:
            self.lost.discard(key)
            self.current['lost_before'] = True
            emit({'id': rid, 'type': 'stderr', 'text': '[the %s kernel had stopped since the last run; '
                  'it was restarted and its earlier state is lost]\n' % language})
        try:
            k.send({'code': req.get('code', '')})
        except OSError:
            self.kernel_died(k)

    def op_interrupt(self, rid, req):
        cur = self.current
        if cur is not None:
            cur['interrupted'] = cur['interrupted'] or 'request'
            self.interrupt_kernel(cur)
            cur['kill_at'] = time.monotonic() + GRACE_S
        emit({'id': rid, 'type': 'done', 'interrupted': cur is not None})

    def interrupt_kernel(self, cur):
        """SIGINT to the run's kernel now, or once it says it is running the code."""
        if cur['running']:
            cur['kernel'].signal(signal.SIGINT)
        else:
            cur['sigint_pending'] = True

    def op_egress(self, rid, req):
        """Starts (once) the relay that offers the server's egress proxy on 127.0.0.1:3128 (see egress_relay.py)."""
        relay = getattr(self, 'relay', None)
        if not SOCKET_DIR:
            return emit({'id': rid, 'type': 'error', 'code': 'bad_request', 'name': 'BadRequest',
                         'value': 'egress needs the agent directory'})
        if relay is None or relay.poll() is not None:
            relay = subprocess.Popen([sys.executable, '-u', os.path.join(AGENT_DIR, 'egress_relay.py'),
                                      os.path.join(SOCKET_DIR, 'egress.sock')],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True)
            if relay.stdout.readline().strip() != b'ready':
                return emit({'id': rid, 'type': 'error', 'code': 'egress_failed', 'name': 'EgressFailed',
                             'value': 'the egress relay did not start'})
            relay.stdout.close()
            self.relay = relay
        if req.get('ca'):
            write_ca_bundle(str(req['ca']))
        emit({'id': rid, 'type': 'done'})

    def op_kernel_open(self, rid, req):
        """A named kernel (an E2B code context): its own variables, started in `cwd`."""
        key, language = req.get('kernel'), req.get('language')
        if not isinstance(key, str) or ':' not in key or language not in COMMANDS:
            return self.fail(rid, 'bad_request', 'kernel_open needs a name with a colon and a language')
        if key in self.kernels:
            return self.fail(rid, 'kernel_exists', 'a kernel %r exists already' % key)
        cwd = str(req.get('cwd') or WORKSPACE)
        cwd = cwd if cwd.startswith('/') else os.path.join(WORKSPACE, cwd)
        with AsUser():
            if not os.path.isdir(cwd):
                return self.fail(rid, 'not_a_directory', 'the context directory %s does not exist' % cwd, 'NotADirectoryError')
        self.kernel(language, key, cwd)
        emit({'id': rid, 'type': 'done'})

    def op_kernel_close(self, rid, req):
        key = req.get('kernel')
        k = self.kernels.get(key) if isinstance(key, str) and ':' in key else None
        if k is None:
            return self.fail(rid, 'no_kernel', 'no context %r in this sandbox' % key, 'NotFound')
        self.end_kernel(k)
        self.kernels.pop(key, None)
        emit({'id': rid, 'type': 'done'})

    def end_kernel(self, k):
        """Kills one kernel; a run in it ends as interrupted, and nothing says its state was lost later."""
        cur = self.current
        if cur is not None and cur['kernel'] is k:
            cur['interrupted'] = cur['interrupted'] or 'request'
            self.kernel_died(k)
        k.kill()
        self.lost.discard(k.key)

    def op_kernel_list(self, rid, req):
        emit({'id': rid, 'type': 'kernels', 'kernels': [{'kernel': k.key, 'language': k.language, 'cwd': k.cwd}
                                                        for k in self.kernels.values()]})

    def op_restart(self, rid, req):
        """Fresh kernels, the environment kept (a Jupyter restart): a running execution ends as interrupted. With
        `kernel`, that one alone (an E2B context's restart)."""
        key = req.get('kernel')
        if key:
            k = self.kernels.get(key)
            if k is None:
                return self.fail(rid, 'no_kernel', 'no context %r in this sandbox' % key, 'NotFound')
            self.end_kernel(k)
            self.kernels[key] = Kernel(k.language, self.env, key, k.cwd)
            return emit({'id': rid, 'type': 'done'})
        cur = self.current
        if cur is not None:
            cur['interrupted'] = cur['interrupted'] or 'request'
            self.kernel_died(cur['kernel'])
        for k in list(self.kernels.values()):
            k.kill()
        self.kernels = {}
        self.lost = set()
        self.count = 0
        language = req.get('language') or 'python'
        self.kernel(language if language in COMMANDS else 'python')
        emit({'id': rid, 'type': 'done'})

    def tick(self):
        self.proc_wake = self.process_ticks(time.monotonic()) if self.procs else None
        cur = self.current
        if cur is None:
            return
        now = time.monotonic()
        if cur['interrupted'] is None and now >= cur['deadline']:
            cur['interrupted'] = 'timeout'
            self.interrupt_kernel(cur)
            cur['kill_at'] = now + GRACE_S
        elif cur['kill_at'] is not None and now >= cur['kill_at']:
            if cur['interrupted'] != 'timeout':
                cur['interrupted'] = 'timeout' if cur['interrupted'] is None else cur['interrupted']
            self.kernel_died(cur['kernel'])

    def next_wakeup(self):
        cur = self.current
        wake = self.proc_wake
        if cur is None:
            return wake
        at = max(0.0, (cur['kill_at'] if cur['interrupted'] else cur['deadline']) - time.monotonic())
        return at if wake is None else min(at, wake)

    # --- processes and terminals ----------------------------------------------------------------
    def fail(self, rid, code, value, name='BadRequest'):
        emit({'id': rid, 'type': 'error', 'code': code, 'name': name, 'value': value})

    def process(self, rid, req, running=False):
        p = self.procs.get(req.get('pid'))
        if p is None:
            self.fail(rid, 'no_process', 'no process %r in this sandbox' % req.get('pid'), 'NotFound')
        elif running and not p.running:
            self.fail(rid, 'process_exited', 'process %d has exited' % p.pid, 'ProcessExited')
            p = None
        return p

    def op_spawn(self, rid, req):
        """Starts a command as the user (argv, cwd, env, stdin, a PTY, a timeout); answers `spawned` with its pid."""
        argv = req.get('cmd')
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a and '\0' not in a for a in argv):
            return self.fail(rid, 'bad_request', 'cmd must be a non-empty list of strings')
        term = req.get('pty')
        live = [p for p in self.procs.values() if p.running]
        if len(live) >= int(req.get('max_processes') or 64):
            return self.fail(rid, 'too_many_processes', 'this sandbox already runs %d processes' % len(live), 'TooMany')
        if term and sum(1 for p in live if p.master is not None) >= int(req.get('max_terminals') or 8):
            return self.fail(rid, 'too_many_terminals', 'this sandbox already has the most terminals it may have', 'TooMany')
        cwd = str(req.get('cwd') or WORKSPACE)
        cwd = cwd if cwd.startswith('/') else os.path.join(WORKSPACE, cwd)
        with AsUser():
            if not os.path.isdir(cwd):
                return self.fail(rid, 'file_not_found', 'the working directory %s is not a directory the user can enter' % cwd, 'FileNotFoundError')
        extra = req.get('env') or {}
        if not isinstance(extra, dict) or any(not k or '=' in k or '\0' in k or '\0' in str(v) for k, v in extra.items()):
            return self.fail(rid, 'bad_request', 'env names must be non-empty, without "=" or NUL; values without NUL')
        env = user_env(self.env)
        env.update({str(k): str(v) for k, v in extra.items()})
        if term:
            env['TERM'] = env.get('TERM') if env.get('TERM', 'dumb') != 'dumb' else 'xterm-256color'
            master, slave = os.openpty()
            self.winsize(master, term)
            child_fds, stdin_w = {0: slave, 1: slave, 2: slave}, None
            mine, theirs = {master: 'pty'}, [slave]
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            if req.get('stdin'):
                in_r, stdin_w = os.pipe()
            else:
                in_r, stdin_w = os.open('/dev/null', os.O_RDONLY), None
            child_fds, master = {0: in_r, 1: out_w, 2: err_w}, None
            mine, theirs = {out_r: 'stdout', err_r: 'stderr'}, [in_r, out_w, err_w]
        try:
            pid = os.fork()
        except OSError as e:
            for fd in list(mine) + theirs + ([stdin_w] if stdin_w is not None else []):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if e.errno != errno.EAGAIN:
                raise
            return self.fail(rid, 'pids_exhausted', 'the sandbox cannot start another process: its pids limit is reached '
                             '(%s)' % tasks_summary(), 'TooMany')
        if pid == 0:
            try:
                os.setsid()
                if term:
                    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for target, fd in child_fds.items():
                    os.dup2(fd, target)
                for fd in os.listdir('/proc/self/fd'):
                    if int(fd) > 2:
                        try:
                            os.close(int(fd))
                        except OSError:
                            pass
                for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ):
                    signal.signal(sig, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                if NPROC:
                    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
                become_user()
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            except BaseException as e:  # said on its stderr, as a shell would: `nope: No such file or directory`
                try:
                    os.write(2, ('%s: %s\n' % (argv[0], e.strerror if isinstance(e, OSError) else e)).encode())
                except BaseException:
                    pass
            finally:
                os._exit(127)
        for fd in theirs:
            os.close(fd)
        for fd in mine:
            set_nonblocking(fd)
        if stdin_w is not None:
            set_nonblocking(stdin_w)
        p = Process(pid, argv, req.get('tag'), mine, master if term else stdin_w, master, int(req.get('keep_bytes') or DEFAULT_OUTPUT_CAP),
                    float(req.get('timeout_ms') or 0))
        self.procs[pid] = p
        if req.get('follow'):  # one round trip for a command run to its end: started and followed
            return self.op_proc_follow(rid, {'pid': pid, 'offset': 0, 'limit': req.get('follow_limit')})
        emit({'id': rid, 'type': 'spawned', 'pid': pid})

    def winsize(self, fd, size):
        cols, rows = size.get('cols'), size.get('rows')
        if not all(isinstance(n, int) and 1 <= n <= 1000 for n in (cols, rows)):
            raise ValueError('cols and rows must be whole numbers from 1 to 1000')
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))

    def op_proc_list(self, rid, req):
        emit({'id': rid, 'type': 'processes', 'processes': [p.view() for p in self.procs.values()]})

    def op_proc_follow(self, rid, req):
        """The process's output from `offset` (or its last `tail` bytes), then live until it exits (`proc_exit`);
        `limit`: after this many bytes the follower gets no more output, only the exit."""
        p = self.process(rid, req)
        if p is None:
            return
        start = max(p.start, p.end - int(req['tail'])) if req.get('tail') is not None else max(p.start, int(req.get('offset') or 0))
        limit = req.get('limit')
        state = [int(limit) if limit else None]
        emit({'id': rid, 'type': 'proc_follow', 'pid': p.pid, 'offset': min(start, p.end), 'end': p.end, 'pty': p.master is not None})
        for off, stream, data in p.since(start):
            self.send_output(rid, state, p, off, stream, data)
        if p.running:
            p.followers[rid] = state
            self.follows[rid] = p
        else:
            emit(dict(p.exit, id=rid, type='proc_exit', pid=p.pid))

    def send_output(self, rid, state, p, off, stream, data):
        if state[0] is not None:
            if state[0] <= 0:
                return
            if len(data) >= state[0]:
                data = data[:state[0]]
                emit({'id': rid, 'type': 'proc_output', 'pid': p.pid, 'stream': stream, 'offset': off,
                      'data': base64.b64encode(data).decode(), 'truncated': True})
                state[0] = 0
                return
            state[0] -= len(data)
        emit({'id': rid, 'type': 'proc_output', 'pid': p.pid, 'stream': stream, 'offset': off,
              'data': base64.b64encode(data).decode()})

    def op_proc_unfollow(self, rid, req):
        self.end_follow(req.get('follow'))
        emit({'id': rid, 'type': 'done'})

    def end_follow(self, follow):
        p = self.follows.pop(follow, None)
        if p is not None:
            p.followers.pop(follow, None)
            emit({'id': follow, 'type': 'done'})
            ROUTES.pop(follow, None)

    def op_proc_input(self, rid, req):
        p = self.process(rid, req, running=True)
        if p is None:
            return
        if p.stdin_fd is None:
            return self.fail(rid, 'no_stdin', 'process %d was started without stdin (or it was closed)' % p.pid, 'NoStdin')
        data = base64.b64decode(req.get('data') or '')
        if len(p.pending_in) + len(data) > STDIN_LIMIT:
            return self.fail(rid, 'stdin_full', 'process %d has not read %d bytes of its input yet' % (p.pid, len(p.pending_in)), 'StdinFull')
        p.pending_in += data
        if req.get('eof'):
            if p.master is not None:
                p.pending_in += b'\x04'
            else:
                p.close_stdin_after = True
        self.write_stdin(p)
        emit({'id': rid, 'type': 'done'})

    def write_stdin(self, p):
        try:
            while p.pending_in:
                n = os.write(p.stdin_fd, p.pending_in[:CHUNK])
                p.pending_in = p.pending_in[n:]
        except BlockingIOError:
            return
        except OSError:  # it closed its stdin: what it did not read is dropped
            p.pending_in = b''
        if p.close_stdin_after and not p.pending_in and p.stdin_fd is not None:
            os.close(p.stdin_fd)
            p.stdin_fd = None

    def op_proc_signal(self, rid, req):
        sig = SIGNALS.get(str(req.get('signal')))
        if sig is None:
            return self.fail(rid, 'bad_request', 'signal must be one of %s' % ', '.join(SIGNALS))
        p = self.process(rid, req, running=True)
        if p is None:
            return
        self.signal_group(p, sig)
        emit({'id': rid, 'type': 'done'})

    def signal_group(self, p, sig):
        """Signals a process's whole group (it leads one: setsid). SIGKILL is repeated until the group is empty, so
        that the children a fork bomb makes while the first signal is delivered go too."""
        for target in (lambda: os.killpg(p.pid, sig), lambda: os.kill(p.pid, sig)):
            try:
                target()
                break
            except ProcessLookupError:
                pass
        if sig != signal.SIGKILL:
            return
        for _ in range(50):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.01)

    def op_proc_resize(self, rid, req):
        p = self.process(rid, req, running=True)
        if p is None:
            return
        if p.master is None:
            return self.fail(rid, 'not_a_terminal', 'process %d has no terminal' % p.pid, 'NotATerminal')
        try:
            self.winsize(p.master, req)
        except ValueError as e:
            return self.fail(rid, 'bad_request', str(e))
        emit({'id': rid, 'type': 'done'})

    def process_output(self, p, fd, reap=True):
        stream = p.fds[fd]
        ended = False
        try:
            for chunk in read_chunks(fd):
                if not chunk:
                    ended = True
                    break
                self.hold = None
                off = p.end
                p.record(stream, chunk)
                for rid, state in list(p.followers.items()):
                    self.send_output(rid, state, p, off, stream, chunk)
        except OSError:  # EIO: a PTY whose other end closed
            ended = True
        if ended:
            del p.fds[fd]
            os.close(fd)
            if fd == p.stdin_fd:  # a PTY's master
                p.stdin_fd = None
            if not p.fds and reap:
                self.reap_process(p)

    def reap_process(self, p):
        if p.status is None:
            try:
                pid, status = os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = p.pid, 0
            if not pid:
                return
            p.status = status
            p.drain_until = time.monotonic() + EXIT_DRAIN_S
        if p.fds and time.monotonic() < p.drain_until:
            return  # its last output may still be on the way
        for fd in list(p.fds):
            self.process_output(p, fd, reap=False)
            if fd in p.fds:
                del p.fds[fd]
                os.close(fd)
        if p.stdin_fd is not None and p.stdin_fd == p.master:
            p.stdin_fd = None  # closed with the output above
        if p.stdin_fd is not None:
            try:
                os.close(p.stdin_fd)
            except OSError:
                pass
            p.stdin_fd = None
        status = p.status
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        names = {v: k for k, v in SIGNALS.items()}
        p.exit = {'exit_code': os.WEXITSTATUS(status) if sig is None else 128 + sig,
                  'signal': names.get(sig, str(sig)) if sig is not None else None,
                  'status': 'timeout' if p.timed_out else 'killed' if sig is not None else 'exited',
                  'duration_ms': round((time.monotonic() - p.began) * 1000, 3), 'ended_at': time.time()}
        for rid in list(p.followers):
            emit(dict(p.exit, id=rid, type='proc_exit', pid=p.pid))
            self.follows.pop(rid, None)
            ROUTES.pop(rid, None)
        p.followers = {}
        done = [q for q in self.procs.values() if not q.running]
        for q in sorted(done, key=lambda q: q.exit['ended_at'])[:max(0, len(done) - PROC_KEEP_EXITED)]:
            del self.procs[q.pid]

    def children_changed(self):
        read_available(self.wakeup_r)
        for p in list(self.procs.values()):
            if p.running:
                self.reap_process(p)

    def process_ticks(self, now):
        wake = None
        for p in list(self.procs.values()):
            if p.kill_at is not None and now >= p.kill_at:  # the grace after a timeout's SIGTERM, leader gone or not
                p.kill_at = None
                self.signal_group(p, signal.SIGKILL)
            if not p.running:
                # A leader that left children behind (`server &`, a fork bomb's first shell): its timeout still ends
                # them (the group id cannot be reused while one of them lives).
                if p.deadline is not None and not p.timed_out:
                    if not group_alive(p.pid):
                        p.deadline = None
                    elif now >= p.deadline:
                        p.timed_out = True
                        self.signal_group(p, signal.SIGKILL)
                for at in (p.kill_at, p.deadline if not p.timed_out else None):
                    if at is not None:
                        wake = max(0.0, at - now) if wake is None else min(wake, max(0.0, at - now))
                continue
            if p.deadline is not None and now >= p.deadline and not p.timed_out:
                p.timed_out = True
                self.signal_group(p, signal.SIGTERM)
                p.kill_at = now + GRACE_S
            if p.status is not None:
                self.reap_process(p)
                if p.running:
                    wake = min(wake or 1, max(0.0, p.drain_until - now))
            for at in (p.deadline if not p.timed_out else None, p.kill_at):
                if at is not None:
                    wake = max(0.0, at - now) if wake is None else min(wake, max(0.0, at - now))
        return wake

    # --- watching directories ------------------------------------------------------------------
    def op_watch(self, rid, req):
        if len(self.watches) >= int(req.get('max_watchers') or 8):
            return self.fail(rid, 'too_many_watchers', 'this sandbox already has %d watchers' % len(self.watches), 'TooMany')

        def run():
            root = self.resolve(req.get('path'))
            if not os.path.exists(root):
                raise FileNotFoundError(errno.ENOENT, 'no such directory')
            if not os.path.isdir(root):
                raise NotADirectoryError(errno.ENOTDIR, 'the path is not a directory')
            rel = os.path.relpath(root, WORKSPACE)
            self.watches[rid] = Watch(rid, root, rel, bool(req.get('recursive')))
            emit({'id': rid, 'type': 'watching', 'path': rel})
        self.handle_denied(rid, run)

    def op_unwatch(self, rid, req):
        self.end_watch(req.get('watch'))
        emit({'id': rid, 'type': 'done'})

    def end_watch(self, watch):
        w = self.watches.pop(watch, None)
        if w is not None:
            w.close()
            emit({'id': watch, 'type': 'done'})
            ROUTES.pop(watch, None)

    def watch_events(self, w):
        for ev in w.events():
            emit(dict(ev, id=w.rid, type='fs_event'))

    def forget(self, rid):
        """A channel closed: its follows and watches end (nobody reads them)."""
        p = self.follows.pop(rid, None)
        if p is not None:
            p.followers.pop(rid, None)
        w = self.watches.pop(rid, None)
        if w is not None:
            w.close()

    # --- ports ---------------------------------------------------------------------------------
    def connect_port(self, ch, req):
        """Turns a socket channel into a byte pipe to a port inside the sandbox: one line answers (`done`, or an error
        naming why), then the bytes flow both ways until either side closes."""
        port = req.get('port')
        rid = req.get('id')
        if ch.sock is None or not isinstance(port, int) or not 1 <= port <= 65535:
            emit_to(ch, {'id': rid, 'type': 'error', 'code': 'bad_request', 'name': 'BadRequest',
                         'value': 'connect needs a port from 1 to 65535, on a socket channel'})
            return ch.flush()
        try:
            tcp = open_port(port)
        except OSError as e:
            emit_to(ch, {'id': rid, 'type': 'error', 'code': 'port_closed', 'name': 'PortClosed',
                         'value': 'nothing listens on port %d inside the sandbox (%s)' % (port, e.strerror or e)})
            ch.flush()
            return ch.close()
        emit_to(ch, {'id': rid, 'type': 'done'})
        ch.flush()
        if ch.closed:  # the server went away meanwhile
            tcp.close()
            return
        CHANNELS.remove(ch)
        ch.closed = True  # the socket now belongs to the relay
        try:
            RELAYS.add(PortRelay(ch.sock, tcp, ch.inbuf))
        except (RuntimeError, OSError):  # no thread to be had (the pids limit is reached): the server sees a reset
            for s in (ch.sock, tcp):
                s.close()
        ch.inbuf = b''

    # --- files (all paths relative to the workspace) -------------------------------------------
    def resolve(self, path, must_exist=True):
        path = str(path or '')
        parts = [p for p in path.split('/') if p not in ('', '.')]
        if path.startswith('/') or '..' in parts or '\0' in path:
            raise PermissionError(errno.EACCES, 'path must stay inside the workspace')
        full = os.path.join(WORKSPACE, *parts)
        real = os.path.realpath(full if must_exist else os.path.dirname(full) or WORKSPACE)
        if real != WORKSPACE and not real.startswith(WORKSPACE + '/'):
            raise PermissionError(errno.EACCES, 'path leads outside the workspace')
        return full if not must_exist else real

    def resolve_entry(self, path):
        """A path that may not exist yet, or the workspace itself."""
        if not [p for p in str(path or '').split('/') if p not in ('', '.')]:
            return WORKSPACE
        return self.resolve(path, must_exist=False)

    def handle_denied(self, rid, fn):
        try:
            with AsUser():
                fn()
        except PermissionError as e:
            emit({'id': rid, 'type': 'error', 'code': 'path_outside_workspace', 'name': 'PermissionError',
                  'value': e.strerror or str(e)})

    def op_list(self, rid, req):
        """A directory's entries; `depth` > 1 descends into subdirectories (not through symlinks), at most
        LIST_MAX entries in all."""
        depth = max(1, min(int(req.get('depth') or 1), 32))

        def run():
            base = self.resolve(req.get('path'))
            entries = []
            todo = [(base, 1)]
            while todo and len(entries) < LIST_MAX:
                directory, level = todo.pop(0)
                for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                    entries.append(entry_info(entry.path, entry.name))
                    if level < depth and entry.is_dir(follow_symlinks=False):
                        todo.append((entry.path, level + 1))
                    if len(entries) >= LIST_MAX:
                        break
            emit({'id': rid, 'type': 'files', 'entries': entries})
        self.handle_denied(rid, run)

    def op_stat(self, rid, req):
        def run():
            full = self.resolve_entry(req.get('path'))
            os.lstat(full)  # FileNotFoundError when it is not there
            emit({'id': rid, 'type': 'files', 'entries': [entry_info(full, os.path.basename(full) or '.')]})
        self.handle_denied(rid, run)

    def op_mkdir(self, rid, req):
        """Makes a directory and its parents; `created` is false when it was there already."""
        def run():
            full = self.resolve_entry(req.get('path'))
            if os.path.isdir(full):
                return emit({'id': rid, 'type': 'done', 'created': False})
            os.makedirs(full)
            emit({'id': rid, 'type': 'done', 'created': True})
        self.handle_denied(rid, run)

    def op_move(self, rid, req):
        """Renames a file or directory (its new parents made as needed); answers with the moved entry."""
        def run():
            source = self.resolve(req.get('source'), must_exist=False)
            target = self.resolve(req.get('destination'), must_exist=False)
            if source == WORKSPACE or target == WORKSPACE:
                raise PermissionError(errno.EACCES, 'the workspace itself cannot be moved')
            os.lstat(source)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(source, target)
            emit({'id': rid, 'type': 'files', 'entries': [entry_info(target, os.path.basename(target))]})
        self.handle_denied(rid, run)

    def op_read(self, rid, req):
        def run():
            real = self.resolve(req.get('path'))
            # O_NONBLOCK: opening a FIFO must not wait for a writer (this loop serves every request of the sandbox).
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, 'the path is a directory')
                if not stat.S_ISREG(st.st_mode):
                    return emit({'id': rid, 'type': 'error', 'code': 'not_a_regular_file', 'name': 'NotARegularFile',
                                 'value': 'only regular files can be read (this is a FIFO, socket or device)'})
                size = st.st_size
                emit({'id': rid, 'type': 'file_start', 'size': size})
                while True:
                    data = os.read(fd, CHUNK)
                    if not data:
                        break
                    emit({'id': rid, 'type': 'file_chunk', 'data': base64.b64encode(data).decode()})
            finally:
                os.close(fd)
            emit({'id': rid, 'type': 'done'})
        self.handle_denied(rid, run)

    def op_write_open(self, rid, req):
        def run():
            target = self.resolve(req.get('path'), must_exist=False)
            if os.path.islink(target):
                raise PermissionError(errno.EACCES, 'path is a symlink')
            parent = os.path.dirname(target)
            os.makedirs(parent, exist_ok=True)
            tmp = '%s/.upload-%s' % (parent, rid)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            self.writes[rid] = (fd, tmp, target)
            emit({'id': rid, 'type': 'done'})
        self.handle_denied(rid, run)

    def op_unpack_open(self, rid, req):
        """Like write_open, but the bytes written are a tar stream unpacked into a workspace directory by tar, run as
        the user (its permissions apply; members leading out of the directory are refused): files a pause kept."""
        def run():
            target = self.resolve(req.get('path'))
            if not os.path.lexists(target):
                raise FileNotFoundError(errno.ENOENT, 'no such directory')
            if not os.path.isdir(target):
                raise NotADirectoryError(errno.ENOTDIR, 'the path is not a directory')
            errors = tempfile.TemporaryFile()
            proc = subprocess.Popen(DROP + ['tar', '--extract', '--file=-', '--directory', target],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, close_fds=True)
            self.writes[rid] = (proc.stdin.fileno(), (proc, errors), target)
            emit({'id': rid, 'type': 'done'})
        self.handle_denied(rid, run)

    def op_write_chunk(self, rid, req):
        fd, tmp, _ = self.writes[req['upload']]
        try:
            os.write(fd, base64.b64decode(req.get('data', '')))
        except OSError:
            self.abort_write(req['upload'])
            raise
        emit({'id': rid, 'type': 'done'})

    def abort_write(self, upload):
        fd, tmp, _ = self.writes.pop(upload)
        if isinstance(tmp, tuple):  # an unpack: its tar goes
            proc, errors = tmp
            proc.kill()
            proc.stdin.close()
            proc.wait()
            errors.close()
            return
        os.close(fd)
        try:
            with AsUser():
                os.unlink(tmp)
        except OSError:
            pass

    def op_write_close(self, rid, req):
        upload = req['upload']
        if req.get('abort'):
            self.abort_write(upload)
            return emit({'id': rid, 'type': 'done'})
        fd, tmp, target = self.writes.pop(upload)
        if isinstance(tmp, tuple):  # an unpack: done when its tar is
            proc, errors = tmp
            proc.stdin.close()
            code = proc.wait()
            errors.seek(0)
            text = errors.read().decode(errors='replace').strip()
            errors.close()
            if code:
                return emit({'id': rid, 'type': 'error', 'code': 'unpack_failed', 'name': 'UnpackFailed', 'value': text[-500:]})
            return emit({'id': rid, 'type': 'done'})
        size = os.fstat(fd).st_size
        os.close(fd)
        with AsUser():
            os.rename(tmp, target)
        emit({'id': rid, 'type': 'done', 'size': size})

    def op_delete(self, rid, req):
        def run():
            path = self.resolve(req.get('path'), must_exist=False)
            if path == WORKSPACE:
                raise PermissionError(errno.EACCES, 'the workspace itself cannot be deleted')
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            emit({'id': rid, 'type': 'done'})
        self.handle_denied(rid, run)

    # --- pausing (see services/sandbox/pause.ts) ---------------------------------------------
    def op_pack(self, rid, req):
        """The workspace as a tar stream (file_chunk events, then done with its size): a pause that keeps files.

        tar runs as the user, so it reads what the user may read and stores symlinks as symlinks."""
        # --one-file-system: volumes mounted under the home are theirs to keep, not the workspace's.
        proc = subprocess.Popen(DROP + ['tar', '--create', '--file=-', '--directory', WORKSPACE, '--sparse',
                                        '--one-file-system', '.'],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                close_fds=True)
        size = 0
        while True:
            data = proc.stdout.read(CHUNK)
            if not data:
                break
            size += len(data)
            emit({'id': rid, 'type': 'file_chunk', 'data': base64.b64encode(data).decode()})
        err = proc.stderr.read().decode(errors='replace')
        if proc.wait() not in (0, 1):  # 1: a file changed while it was read, which an idle sandbox rarely sees
            return emit({'id': rid, 'type': 'error', 'code': 'pack_failed', 'name': 'PackFailed', 'value': err.strip()[-500:]})
        emit({'id': rid, 'type': 'done', 'size': size})

    def op_suspend(self, rid, req):
        """Before a checkpoint: no socket may connect the sandbox to the host (CRIU and gVisor refuse, and under gVisor
        the sandbox stops), so the server's connections and the agent's listener close; the agent waits for the file
        `resume` in its directory (written after the restore, or when a checkpoint failed) and listens again."""
        if not SOCKET_DIR or self.listener is None:
            return emit({'id': rid, 'type': 'done'})
        marker = os.path.join(SOCKET_DIR, 'resume')
        try:
            os.unlink(marker)  # a word meant for an earlier suspension
        except OSError:
            pass
        emit({'id': rid, 'type': 'done'})
        flush_all()
        for ch in [c for c in CHANNELS if c.sock is not None]:
            ch.close()
        for r in list(RELAYS):  # proxied connections to ports are host sockets too
            r.close()
        self.listener.close()
        self.listener = None
        path = os.path.join(SOCKET_DIR, 'agent.sock')
        try:
            os.unlink(path)
        except OSError:
            pass
        began = time.time()
        # A wall clock that jumps (restored long after the checkpoint) ends the wait as well.
        while not os.path.exists(marker) and 0 <= time.time() - began < SUSPEND_WAIT_S:
            time.sleep(0.01)
        try:
            os.unlink(marker)
        except OSError:
            pass
        self.listener = listen(SOCKET_DIR)

    # --- main loop ---------------------------------------------------------------------------
    def read_requests(self, ch):
        try:
            data = read_available(ch.rfd)
        except OSError:
            data = b''
        if data is None:
            return
        if not data:
            # The attach stream's end stops the agent when it is the server's channel. With the socket channel stdin
            # is unused, and a restored checkpoint may give an ended one: the agent goes on.
            if ch is STDIO and not SOCKET_DIR:
                self.stop = True
            else:
                ch.close()
            return
        ch.inbuf += data
        while b'\n' in ch.inbuf:
            line, ch.inbuf = ch.inbuf.split(b'\n', 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                ch.queue(b'{"type":"error","code":"bad_request","name":"BadRequest","value":"invalid JSON"}\n')
                continue
            if isinstance(req, dict) and req.get('op') == 'connect':  # the rest of this channel is a port's bytes
                return self.connect_port(ch, req)
            self.handle(req, ch)

    def accept(self, listener):
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        sock.setblocking(True)  # written whole (as stdout is); read only when select says so
        ch = Channel(sock.fileno(), sock.fileno(), sock)
        CHANNELS.append(ch)
        python = self.kernels.get('python')
        if python is not None and python.ready and not self.current:
            emit_to(ch, {'type': 'ready'})

    def run(self):
        set_nonblocking(0)
        self.wakeup_r, wakeup_w = os.pipe()
        set_nonblocking(self.wakeup_r)
        set_nonblocking(wakeup_w)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler (not the default), so that the wakeup fd hears of it
        self.proc_wake = None
        self.listener = listen(SOCKET_DIR) if SOCKET_DIR else None
        self.kernel('python')
        while not self.stop:
            timeout = self.next_wakeup()
            if self.hold is not None:
                left = self.hold - time.monotonic()
                if left > 0:
                    timeout = left if timeout is None else min(timeout, left)
                else:
                    self.hold = None
            if self.hold is None:
                flush_all()
            owners = self.fd_owner()
            channels = {ch.rfd: ch for ch in CHANNELS}
            listener = self.listener
            procs = {fd: p for p in self.procs.values() for fd in p.fds}
            watches = {w.fd: w for w in self.watches.values()}
            stdins = {p.stdin_fd: p for p in self.procs.values() if p.pending_in and p.stdin_fd is not None}
            wanted = list(channels) + list(owners) + list(procs) + list(watches) + [self.wakeup_r] + ([listener.fileno()] if listener else [])
            readable, writable, _ = select.select(wanted, list(stdins), [], timeout)
            for fd in writable:
                self.write_stdin(stdins[fd])
            ready = {}  # kernel -> its readable fds
            for fd in readable:
                if fd == self.wakeup_r:
                    self.children_changed()
                elif fd in procs:
                    if fd in procs[fd].fds:
                        self.process_output(procs[fd], fd)
                elif fd in watches:
                    if watches[fd].rid in self.watches:
                        self.watch_events(watches[fd])
                elif fd in channels:
                    if not channels[fd].closed:
                        self.read_requests(channels[fd])
                elif listener is not None and fd == listener.fileno():
                    self.accept(listener)
                else:
                    ready.setdefault(owners[fd], []).append(fd)
            for k, fds in ready.items():
                if not k.alive:
                    continue
                self.hold = None  # the run has output (or has ended): everything queued leaves now
                if k.ev_r in fds:
                    self.kernel_events(k)  # which reads both output pipes first
                else:
                    self.drain_output(k, fds)
            self.tick()
        for k in self.kernels.values():
            k.kill()


def emit_to(ch, event):
    ch.queue((ENCODE(event) + '\n').encode())


def listen(directory):
    """The direct channel: a unix socket in a directory only root can enter (kernels run as uid 1000).

    A server that is not root (in a container) shares the directory with root's group instead (0770, its group 0):
    then the socket is 0660 for the server to connect, and the directory's mode is the server's to keep."""
    path = os.path.join(directory, 'agent.sock')
    try:
        shared = os.stat(directory).st_uid != os.getuid()
        if not shared:
            os.chmod(directory, 0o700)
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Made with its mode (0660 shared, else 0600, by the umask), not chmod-ed after: the server connects as soon
        # as the socket appears.
        umask = os.umask(0o117 if shared else 0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(umask)
        listener.listen(16)
        listener.setblocking(False)
        return listener
    except OSError as e:  # the attach stream still works
        sys.stderr.write('agent socket unavailable: %s\n' % e)
        return None


def prepare_workspace():
    """Copy the prebuilt matplotlib font cache into the (tmpfs) home."""
    target = WORKSPACE + '/.config/matplotlib'
    os.makedirs(target, exist_ok=True)
    if os.path.isdir('/opt/mplconfig'):
        for name in os.listdir('/opt/mplconfig'):
            if name.endswith('.json'):
                shutil.copy(os.path.join('/opt/mplconfig', name), target)


if __name__ == '__main__':
    with AsUser():
        prepare_workspace()
    AGENT = Agent()
    AGENT.run()
