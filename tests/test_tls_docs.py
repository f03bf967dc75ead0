"""The runnable examples in docs/tls.md run and print what the doc says;
the options table names every TlsOptions field."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from conftest import subprocess_env
from sluiceway.tls import TlsOptions
from tls_certs import HAVE_OPENSSL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = open(os.path.join(ROOT, "docs", "tls.md"), encoding="utf-8").read()


def _run_example(tmp_path, marker):
    """Make the doc's certificate (its sh block) in ``tmp_path`` and run the
    doc's Python example that contains ``marker`` there."""
    sh = re.search(r"```sh\n(.*?)```", DOC, re.S).group(1)
    subprocess.run(sh.replace("\\\n", " "), shell=True, cwd=tmp_path, check=True,
                   capture_output=True, timeout=60)
    example = next(b for b in re.findall(r"```python\n(.*?)```", DOC, re.S) if marker in b)
    proc = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return example, proc


@pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")
def test_first_listener_example_runs(tmp_path):
    example, proc = _run_example(tmp_path, "asyncio.run(main())")
    said = re.search(r"# (TLSv1.3 .*)", example).group(1)
    assert proc.stdout.strip() == said


def test_every_option_is_documented():
    table = DOC.split("## Options", 1)[1].split("\n## ", 1)[0]
    for f in dataclasses.fields(TlsOptions):
        assert f"`{f.name}`" in table, f.name



@pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")
def test_which_layer_example_runs(tmp_path):
    _, proc = _run_example(tmp_path, "tls_layer_for")
    if os.environ.get("SLUICEWAY_TLS_LAYER") == "python":
        assert proc.stdout.strip() == "('python', 'SLUICEWAY_TLS_LAYER=python')"
    else:
        assert proc.stdout.strip() == "('c', None)"
