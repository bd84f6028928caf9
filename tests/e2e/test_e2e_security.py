"""End to end: who may talk to the agent.

The API is on loopback unless told otherwise; beyond loopback the agent refuses to start
without a token file (created 0600 with a random token when missing, refused when others
can read it); over HTTPS with ``--tls-cert``/``--tls-key``, which ``loxicmd --protocol
https --cacert`` reaches and refuses to trust without the CA.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from lab import Lab, Topology, wait_for
from lbnode import LbNode

pytestmark = pytest.mark.e2e


def _loxilbd(node: LbNode, *args: str) -> subprocess.CompletedProcess[str]:
    return node.ns.run("loxilbd", "--state-dir", str(node.state_dir), *node.pin_args,
                       "--interfaces", ",".join(node.interfaces), *args, check=False,
                       timeout=30)


def test_beyond_loopback_needs_a_token_file(lab: Lab, topo: Topology) -> None:
    node = LbNode(lab, topo.lb, topo.lb_ifaces)
    for args, words in ((["--host", "0.0.0.0"], "--host 0.0.0.0 (beyond loopback) needs "
                                                "--token-file FILE"),
                        (["--host", "0.0.0.0", "--token", "t0k"], "needs --token-file"),
                        (["--token", "a", "--token-file", "/x"], "give one of --token and "
                                                                 "--token-file")):
        cp = _loxilbd(node, "--port", str(node.port), *args)
        assert cp.returncode == 2 and words in cp.stderr, (args, cp.stderr)
    loose = lab.workdir / "loose.token"
    loose.write_text("secret\n")
    loose.chmod(0o644)
    cp = _loxilbd(node, "--port", str(node.port), "--host", "0.0.0.0", "--token-file",
                  str(loose))
    assert cp.returncode == 2 and "is mode 0644; allowed: 0600" in cp.stderr, cp.stderr

    # a token file that does not exist is made, 0600, and the API wants what it holds
    made = lab.workdir / "agent" / "api.token"
    node.extra_args = ("--host", "0.0.0.0", "--token-file", str(made))
    node.start()
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    token = made.read_text().strip()
    assert len(token) >= 32
    status, body = node.api("GET", "/config/loadbalancer/all")
    assert status == 401 and "invalid token" in body["result"], body
    env = {**os.environ, "LOXICMD_TOKEN_FILE": str(made)}
    cp = subprocess.run(node.ns.argv("loxicmd", "-p", str(node.port), "-s",
                                     topo.lb_client_side_ip, "get", "lb"),
                        capture_output=True, text=True, env=env, timeout=30, check=False)
    assert cp.returncode == 0, cp.stderr
    node.stop()
    node.start()  # the same file next time, the same token
    assert made.read_text().strip() == token


def _certificates(where: Path, ip: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for `ip` (openssl)."""
    ca_key, ca, key, csr, cert = (where / n for n in ("ca.key", "ca.pem", "agent.key",
                                                       "agent.csr", "agent.pem"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
            "-subj", "/CN=lab CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", "/CN=loxilbd")
    ext = where / "san.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    key.chmod(0o600)
    return ca, cert, key


def test_tls(lab: Lab, topo: Topology) -> None:
    ca, cert, key = _certificates(lab.workdir, "127.0.0.1")
    node = LbNode(lab, topo.lb, topo.lb_ifaces)
    key.chmod(0o644)
    cp = _loxilbd(node, "--port", str(node.port), "--tls-cert", str(cert), "--tls-key",
                  str(key))
    assert cp.returncode == 2 and "is mode 0644" in cp.stderr, cp.stderr
    cp = _loxilbd(node, "--port", str(node.port), "--tls-cert", str(cert))
    assert cp.returncode == 2 and "--tls-cert and --tls-key go together" in cp.stderr
    key.chmod(0o600)
    node.extra_args = ("--tls-cert", str(cert), "--tls-key", str(key))
    proc = node.ns.popen(*node.argv(), stdout=subprocess.DEVNULL,
                         stderr=open(node.log_path, "w"))  # noqa: SIM115
    node.proc = lab.track(proc)

    def https(*args: str) -> subprocess.CompletedProcess[str]:
        return node.ns.run("loxicmd", "-p", str(node.port), "--protocol", "https", *args,
                           check=False, timeout=30)
    wait_for(lambda: https("--cacert", str(ca), "get", "lb").returncode == 0, timeout=20,
             what="the agent over HTTPS")
    cp = https("--cacert", str(ca), "create", "lb", "198.18.100.1", "--tcp=80:8080",
               f"--endpoints={topo.backend_ips[0]}:1")
    assert cp.returncode == 0, cp.stderr
    cp = https("get", "lb")  # no CA: the system's do not know the lab's
    assert cp.returncode == 3 and "TLS certificate was not accepted" in cp.stderr, cp.stderr
    assert "--cacert" in cp.stderr
    cp = node.ns.run("loxicmd", "-p", str(node.port), "get", "lb", check=False, timeout=30)
    assert cp.returncode == 3, cp.stderr  # plain HTTP to an HTTPS port gets no answer
