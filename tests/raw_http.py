"""HTTP/1.1 over a bare socket, for what an HTTP client library will not do: stop in the
middle of a request's headers, hold a connection idle, watch when the server closes it."""

import socket

# A request line and the first header, without the blank line that would end them.
HALF_HEADERS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def exchange(sock: socket.socket, request: bytes = REQUEST) -> tuple[int, dict[str, str], bytes]:
    """One request on `sock`: the answer's status, headers and body (read to Content-Length)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the headers: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed in the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def get(port: int) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        return exchange(sock)


def is_open(sock: socket.socket, wait: float) -> bool:
    """Nothing arrives and the peer does not close within `wait` seconds."""
    sock.settimeout(wait)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    except ConnectionError:
        pass
    return False


def read_to_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes the connection (within `timeout` seconds)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
