"""itshop: a service for the integration target; GET / answers what answer() says."""

import os
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def answer():
    return "version 1"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s pid %d\n" % (answer(), os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main(port_file):
    server = HTTPServer(("127.0.0.1", 0), Handler)
    if os.fork() == 0:
        server.serve_forever()
        os._exit(0)
    with open(port_file + ".tmp", "w") as fh:
        fh.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    while True:
        time.sleep(3600)
