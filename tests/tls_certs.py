"""Certificates for the TLS tests, made with the openssl command line: a CA,
a server certificate for localhost and 127.0.0.1, and a client certificate
(CN=sluiceway test client), all signed by that CA; and the SSL contexts
built from them."""

import shutil
import ssl
import subprocess

HAVE_OPENSSL = shutil.which("openssl") is not None


def make_certs(d):
    """Write ca.pem, srv.pem/srv.key and cli.pem/cli.key into ``d``."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=sluiceway test CA")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in (("srv", "localhost"), ("cli", "sluiceway test client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


def make_ca(d, name):
    """Write another CA (``name``.pem/.key) into ``d``."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}"],
                   cwd=d, check=True, capture_output=True)
    return d / f"{name}.pem"


def make_client_cert(d, name, cn, ca="ca"):
    """Write a client certificate ``name``.pem/.key for ``cn`` signed by the
    CA ``ca`` (``make_certs``'s by default) into ``d``."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={cn}")
    run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2")
    return d / f"{name}.pem", d / f"{name}.key"


def server_context(d, client_cert=False):
    """A server context with the localhost certificate; ``client_cert``:
    require a client certificate signed by the test CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(d / "srv.pem"), str(d / "srv.key"))
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(d / "ca.pem"))
    return ctx


def client_context(d, cert=False):
    """A client context that trusts the test CA; ``cert``: it presents the
    client certificate."""
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(d / "cli.pem"), str(d / "cli.key"))
    return ctx


def issue(d, name, cn, sans=("DNS:localhost", "IP:127.0.0.1"), ec=False, days=2, ca="ca"):
    """Write ``name``.pem and ``name``.key into ``d``: a certificate for
    ``cn`` with ``sans``, signed by the CA ``ca`` (made by make_certs);
    ``ec``: an ECDSA P-256 key instead of RSA 2048."""
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if ec else \
        ["-newkey", "rsa:2048"]
    (d / f"{name}.cnf").write_text("subjectAltName=" + ",".join(sans) + "\n")
    run("req", *key, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.cnf")
    return d / f"{name}.pem", d / f"{name}.key"


def serial_of(pem_path):
    """The serial number of a PEM certificate, as ssl prints it."""
    return ssl._ssl._test_decode_cert(str(pem_path))["serialNumber"]
