"""Persistent Python kernel: code requests on KERNEL_CTRL_FD, events on KERNEL_EVENT_FD, output on fds 1 and 2."""
import ast
import base64
import builtins
import inspect
import io
import json
import os
import sys
import traceback

EVENTS = os.fdopen(int(os.environ.pop('KERNEL_EVENT_FD')), 'w', buffering=1)
CTRL = os.fdopen(int(os.environ.pop('KERNEL_CTRL_FD')), 'r')
# Whole lines reach the client as they are printed (a pipe would otherwise buffer until the run ends).
sys.stdout.reconfigure(line_buffering=True, write_through=False)
sys.stderr.reconfigure(line_buffering=True, write_through=False)
KERNEL_PID = os.getpid()
ENCODE = json.JSONEncoder(separators=(',', ':')).encode  # made once: json.dumps with options makes one per call
NAMESPACE = {'__name__': '__main__', '__builtins__': builtins}

try:  # under memory pressure the kernel, not the agent, is what the OOM killer should pick
    with open('/proc/self/oom_score_adj', 'w') as f:
        f.write('1000')
except OSError:
    pass


def emit(event, wait=False):
    sys.stdout.flush()
    sys.stderr.flush()
    EVENTS.write(ENCODE(event) + '\n')
    if wait:
        # Output and events travel in two pipes; waiting for the agent's ack keeps what is printed next after this event.
        CTRL.readline()


def flush_figures():
    """Send every open matplotlib figure as a PNG, then close them (called by plt.show() and after each run)."""
    plt = sys.modules.get('matplotlib.pyplot')
    if plt is None:
        return
    for num in plt.get_fignums():
        buf = io.BytesIO()
        plt.figure(num).savefig(buf, format='png', bbox_inches='tight')
        emit({'type': 'display', 'data': {'image/png': base64.b64encode(buf.getvalue()).decode()}}, wait=True)
    plt.close('all')


def rich(value):
    data = {'text/plain': repr(value)}
    html = getattr(value, '_repr_html_', None)
    if callable(html):
        try:
            out = html()
            if out:
                data['text/html'] = out
        except Exception:
            pass
    return data


def run(code):
    tree = ast.parse(code, '<cell>', 'exec')
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    for node, mode in ((tree, 'exec'), (last, 'eval')):
        if node is None or (mode == 'exec' and not tree.body):
            continue
        value = eval(compile(node, '<cell>', mode, flags=flags), NAMESPACE)
        if inspect.iscoroutine(value):
            import asyncio
            value = asyncio.run(value)
        if mode == 'eval' and value is not None:
            NAMESPACE['_'] = value
            emit({'type': 'result', 'data': rich(value)})


def report(exc):
    frames = [] if isinstance(exc, SyntaxError) else traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if f.filename != __file__]
    lines = traceback.format_list(user) + traceback.format_exception_only(type(exc), exc)
    if user:
        lines.insert(0, 'Traceback (most recent call last):\n')
    emit({'type': 'error', 'name': type(exc).__name__, 'value': str(exc), 'traceback': lines})


def leave_if_forked():
    """A process forked by user code must never come back here and act as a second kernel."""
    if os.getpid() != KERNEL_PID:
        os._exit(0)


def preload():
    """Import the modules the server asked for (SANDBOX_PRELOAD) so the first run that uses them does not wait."""
    import importlib
    for name in filter(None, os.environ.pop('KERNEL_PRELOAD', '').split(',')):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a module the image lacks must not keep the sandbox from starting
            sys.stderr.write('preload of %s failed: %s\n' % (name, exc))


def main():
    preload()
    emit({'type': 'ready'})
    while True:
        try:
            line = CTRL.readline()
            if not line:
                return
            request = json.loads(line)
            status = 'ok'
            try:
                emit({'type': 'running'})  # from here an interrupt stops this run (the agent holds one sent earlier)
                run(request['code'])
            except BaseException as exc:  # KeyboardInterrupt and SystemExit included: the kernel lives on
                leave_if_forked()
                status = 'error'
                report(exc)
            leave_if_forked()
            try:
                flush_figures()
            except Exception as exc:
                report(exc)
            emit({'type': 'end', 'status': status})
        except KeyboardInterrupt:  # an interrupt that arrived between executions
            continue


main()
