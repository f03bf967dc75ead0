# Developer targets. The compiled modules land in corepy/sluiceway/, so
# `PYTHONPATH=corepy` (set below) runs the tree without installing it.
PY ?= python3
export PYTHONPATH := $(CURDIR)/corepy

.PHONY: build debug annotate test test-slow bench wheel wheels conf-docs clean

build:          ## optimised in-place build
	$(PY) setup.py build_ext --inplace

debug:          ## Cython line tracing, C assertions, -O0 -g
	SLUICEWAY_DEBUG=1 $(PY) setup.py build_ext --inplace --force

annotate:       ## Cython's annotated HTML (yellow = Python interaction) in build/annotate/
	SLUICEWAY_ANNOTATE=1 $(PY) setup.py build_ext --inplace --force
	@find build/annotate -name '*.html' | sed 's/^/annotated: /'

test: build
	$(PY) -m pytest tests -q

test-slow: build
	$(PY) -m pytest tests -q -m slow

bench: build
	$(PY) bench/bench_parser.py

wheels:         ## manylinux wheels for CPython 3.10-3.13 and the sdist, in wheelhouse/
	bash ci/build-wheels.sh

wheel: wheels

conf-docs:      ## regenerate conf.example.yaml and the key table in docs/configuration.md
	$(PY) -m sluiceway config example > conf.example.yaml
	$(PY) ci/update_conf_docs.py

clean:
	rm -rf build dist wheelhouse corepy/sluiceway/*.so pyx/sluiceway/*.c LICENSE.llhttp
