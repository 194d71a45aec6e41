# snnconv: `make demo` (set-up + benchmark) and `make test` (set-up + every test and chapter).
# Set-up creates .venv here, installs pinned versions, and the Fashion-MNIST files when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.snnconv-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
OUT    ?= bench-out

.PHONY: setup data demo test book bench-speed clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 "torchaudio==2.11.*"
	$(BIN)/pip install -q spikingjelly==2.0.0 snntorch==1.0.0 jupyter-book==1.0.4.post1 nbval==0.11.0 nir==1.0.8 nirtorch==2.6 hypothesis==6.170.15
	$(BIN)/pip install -q -e ".[book,test,nir]"
	$(BIN)/pip check
	touch $(STAMP)

data:
	@if [ -n "$$SNNCONV_DATA_DIR" ] || [ -f $(FMNIST) ]; then \
	  echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = "0" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing. Install it with: sudo apt-get install dataset-fashion-mnist"; \
	  echo "or put the four IDX .gz files in a folder and set SNNCONV_DATA_DIR to it."; exit 1; \
	fi

# Main job: our methods against SpikingJelly's own recipes on the zoo Net4 (about 6 min on 2 cores).
demo: setup
	$(BIN)/snnconv bench --model fmnist-net4 --methods max,percentile,sj-max,sj-99.9,sj-best \
	  --timesteps 1,2,4,8,16,32,64 --out $(OUT)

# Every unit test and every book chapter (nbval executes the notebooks).
test: setup
	$(BIN)/python -m pytest tests book --nbval-lax -q -p no:cacheprovider

book: setup
	$(BIN)/jupyter-book build .

bench-speed: setup
	$(BIN)/python benchmarks/sim_speed.py

clean:
	rm -rf _build $(OUT) .pytest_cache
