"""The TCP port taken before any worker starts (daemon/http/listen.py): a port in use is
refused at once, naming the address as a client would write it. Loopback only."""

from __future__ import annotations

import socket

import pytest

from fnd.daemon.http.listen import ListenError, bind_tcp, probe_tcp, tcp_address

pytestmark = pytest.mark.unit


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ListenError) as raised:
            bind_tcp("127.0.0.1", port)
        assert str(raised.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
        with pytest.raises(ListenError):
            probe_tcp("127.0.0.1", port)


def test_a_free_port_is_bound_but_not_yet_listening() -> None:
    sock = bind_tcp("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    finally:
        sock.close()
    probe_tcp("127.0.0.1", 0)  # port 0 (any free one) is never in use


def test_addresses_are_written_as_clients_write_them() -> None:
    assert tcp_address("127.0.0.1", 3000) == "127.0.0.1:3000"
    assert tcp_address("::1", 3000) == "[::1]:3000"
