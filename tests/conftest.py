"Fixtures shared by the test files: a loopback HTTP server for the download tests (datasets, official weights)."
import http.server, threading
from functools import partial
import pytest

@pytest.fixture
def server(tmp_path):
    served = tmp_path / 'served'; served.mkdir()
    hits = []
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self): hits.append(self.path); super().do_GET()
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), partial(Handler, directory=str(served)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield served, f'http://127.0.0.1:{srv.server_address[1]}', hits
    srv.shutdown(); srv.server_close()

@pytest.fixture(autouse=True)     # downloads go to 127.0.0.1: no proxy in between
def no_proxy(monkeypatch):
    for k in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'): monkeypatch.delenv(k, raising=False)
