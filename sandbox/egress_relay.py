"""Offers the server's egress proxy inside a sandbox that has no network: 127.0.0.1:3128 -> the unix socket in the
agent's directory (root's alone, so the kernels reach the proxy only through this port). Started by the agent as
root when the sandbox gets a network policy; it only moves bytes, and the server decides what may pass."""
import os
import socket
import sys
import threading

LISTEN = ('127.0.0.1', 3128)
CHUNK = 65536


def pump(src, dst):
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def serve(client, path):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def main():
    path = sys.argv[1]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(LISTEN)
    listener.listen(64)
    sys.stdout.write('ready\n')
    sys.stdout.flush()
    os.close(1)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client, path), daemon=True).start()


if __name__ == '__main__':
    main()
