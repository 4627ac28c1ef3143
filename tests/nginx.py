"""The shipped nginx site (deploy/nginx/waygate.conf) run for real in front of Waygate hosts:
only its @TEST@ lines change (loopback ports, the upstream servers, a tmp self-signed cert)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT, free_port

SITE = ROOT / "deploy" / "nginx" / "waygate.conf"


@dataclass
class Nginx:
    """nginx with the shipped site, proxying to ``upstream_ports`` on loopback."""

    upstream_ports: list[int]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="waygate-nginx-")))
    http: int = 0
    https: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        self.root.chmod(0o755)  # nginx workers run unprivileged and must read config and cert
        self._make_cert()
        self.http, self.https = free_port(), free_port()
        (self.root / "site.conf").write_text(self._site())
        (self.root / "nginx.conf").write_text(self._main_conf())
        check = subprocess.run(self._cmd("-t"), capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(self._cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.https), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start listening")

    @property
    def cert(self) -> Path:
        """The self-signed certificate (valid for 127.0.0.1): a client's ``verify``."""
        return self.root / "cert.pem"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def _cmd(self, *extra: str) -> list[str]:
        return ["nginx", *extra, "-p", str(self.root), "-c", str(self.root / "nginx.conf")]

    def _make_cert(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(self.root / "key.pem"),
             "-out", str(self.root / "cert.pem")],
            check=True,
            capture_output=True,
        )  # fmt: skip
        (self.root / "key.pem").chmod(0o644)

    def _site(self) -> str:
        replacements = {
            "upstream": [f"server 127.0.0.1:{port};" for port in self.upstream_ports],
            "http": [f"listen 127.0.0.1:{self.http};"],
            "https": [f"listen 127.0.0.1:{self.https} ssl http2;"],
            "cert": [f"ssl_certificate {self.root / 'cert.pem'};"],
            "key": [f"ssl_certificate_key {self.root / 'key.pem'};"],
        }
        site = []
        for line in SITE.read_text().splitlines():
            marker = re.search(r"# @TEST@ (\w+)", line)
            if marker:
                indent = line[: len(line) - len(line.lstrip())]
                site.extend(indent + text for text in replacements[marker.group(1)])
            else:
                site.append(line)
        return "\n".join(site) + "\n"

    def _main_conf(self) -> str:
        temp = {name: self.root / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir()
            path.chmod(0o777)
        return f"""
worker_processes 1;
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {self.root}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {self.root}/site.conf;
}}
"""
