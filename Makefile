# Two commands for a fresh Debian machine (as root): `make demo` and `make test`.
# Both set everything up first and are fast the second time.
#
#   VENV=path        use another virtual environment (default .venv)
#   TORCH_SPEC=spec  torch to install when the venv has none (default: 2.13.0, the CPU build where pip
#                    finds that wheel, as on the CI machines' local wheels; a GPU user keeps theirs:
#                    install it in the venv first, or pass TORCH_SPEC=torch)
#   TORCH_INDEX=url  the index torch comes from, e.g. https://download.pytorch.org/whl/cpu (public
#                    PyPI's Linux x86_64 torch is the CUDA build, several GB)
#   VENV_FLAGS=...   e.g. --system-site-packages to reuse a system-wide torch
#   INTERPRETER_TRITON=spec  the Triton that tests/test_fused.py runs the fused rollout kernel with,
#                    in its CPU interpreter (default triton==3.6.0; Linux x86_64 only)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
VENV_FLAGS ?=
INTERPRETER_TRITON ?= triton==3.6.0
RENDER_PKGS := libegl1 libegl-mesa0 libopengl0 libgl1-mesa-dri
export MUJOCO_GL ?= egl

.PHONY: setup system-deps demo test bench lint clean

setup: system-deps $(VENV)/.installed

system-deps:
	@if dpkg -s $(RENDER_PKGS) >/dev/null 2>&1; then \
		echo "setup: headless rendering packages present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "setup: installing $(RENDER_PKGS)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(RENDER_PKGS) >/dev/null; \
	else \
		echo "setup: cannot install system packages here (need root and apt-get)."; \
		echo "       Install these for headless rendering: $(RENDER_PKGS)"; \
		echo "       (or libosmesa6 and set MUJOCO_GL=osmesa)"; \
	fi

$(PY):
	python3 -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml Makefile | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "setup: keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		echo "setup: installing $(TORCH_SPEC)"; $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@# In a folder of the venv that is not on its path: torch imports any triton it can find, and importing triton 3.9
	@# after Mesa's EGL has loaded segfaults (bench/RESULTS.md); only the test's own process uses it.
	@if [ "$$(uname -sm)" = "Linux x86_64" ] && ! $(PY) -c "import triton" 2>/dev/null; then \
		$(PY) -m pip install -q --no-deps --target $(VENV)/interpreter-triton "$(INTERPRETER_TRITON)"; \
	fi
	@touch $@

demo: setup
	$(PY) -m robobrain.cli demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/bench_envs.py
	$(PY) bench/bench_world_model.py --preset cpu

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
