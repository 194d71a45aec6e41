# snnconv: `make demo` (set-up + benchmark) and `make test` (set-up + every test and chapter).
# Set-up creates .venv here, installs pinned versions, and the Fashion-MNIST files when missing; the book and
# its browser test also install (as root) Debian's MathJax, Chromium and its WebDriver when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.snnconv-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
OUT    ?= bench-out
BOOK_DEBS := libjs-mathjax chromium chromium-driver
# processes for the chapters and the demo (one per core)
JOBS   ?= $(shell nproc 2>/dev/null || echo 1)
# Idle OpenMP threads sleep instead of spinning (every target, the book's kernels, subprocesses); your own
# setting wins. book/performance.md: Threads and busy machines.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup data book-debs demo test book bench-speed bench-contention clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 "torchaudio==2.11.*"
	$(BIN)/pip install -q spikingjelly==2.0.0 snntorch==1.0.0 jupyter-book==1.0.4.post1 nbval==0.11.0 ipykernel==6.29.5 nir==1.0.8 nirtorch==2.6 sinabs==2.0.3 samna==0.48.6 hypothesis==6.170.15 \
	  selenium==4.51.0
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

# MathJax served from the built book, and headless Chromium for tests/book/test_book_browser.py.
book-debs:
	@if [ -f /usr/share/javascript/mathjax/MathJax.js ] && command -v chromium >/dev/null \
	    && command -v chromedriver >/dev/null; then \
	  echo "MathJax, Chromium, chromedriver: found"; \
	elif [ "$$(id -u)" = "0" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BOOK_DEBS); \
	else \
	  echo "The offline book needs Debian's $(BOOK_DEBS): sudo apt-get install $(BOOK_DEBS)"; exit 1; \
	fi

# Main job: each paper's best method beside SpikingJelly's two strongest recipes on the zoo Net4 (full test set) and
# the BN VGG, T = 1..32 (snnconv_ext/app/demo.py): marked table, $(OUT)/results.csv and $(OUT)/demo.png, and
# $(OUT)/headline.md, copied to book/generated/demo_headline.md: the table the book's landing page includes.
# JOBS benches at once, one process each (default: one per core).
demo: setup
	$(BIN)/snnconv demo --out $(OUT) --jobs $(JOBS)
	mkdir -p book/generated && cp $(OUT)/headline.md book/generated/demo_headline.md   # the book's landing table
	$(BIN)/python .ci/readme_blocks.py   # and the README's copy of it

# Every chapter once, through the strict book build (a chapter's failing assert fails it), every unit test (in
# one single-threaded process beside the chapters, log in _build/unit-tests.log), then the built pages in
# headless Chromium (tests/book/test_book_browser.py). Runs all three, fails if any failed.
test: setup
	@mkdir -p _build; status=0; \
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=10 --ignore=tests/book/test_book_browser.py \
	  > _build/unit-tests.log 2>&1 & tests=$$!; \
	$(MAKE) --no-print-directory book || status=1; \
	wait $$tests || status=1; \
	echo "Unit tests (ran beside the chapters):"; cat _build/unit-tests.log; \
	$(BIN)/python -m pytest tests/book/test_book_browser.py -q -p no:cacheprovider || status=1; \
	echo "Chapter screenshots: $(CURDIR)/_build/screenshots"; \
	exit $$status

# Strict, cached, offline HTML book in _build/html. Chapters run once and are cached (_build/.jupyter_cache)
# until their code changes, JOBS at a time (default: one per core, single-threaded kernels; .ci/run_chapters.py);
# --all re-reads every page so every warning shows again; -W --keep-going fails on any warning, including a
# failed or timed-out cell. Then each chapter's wall and CPU seconds, or its failing cell, and the prose-number check
# (.ci/prose_numbers.py: every number in a chapter's text is printed by its run, marked external, or the paper's).
book: setup book-debs
	@status=0; \
	$(BIN)/python .ci/run_chapters.py --jobs $(JOBS) || status=1; \
	$(BIN)/jupyter-book build -W --keep-going --all . || status=1; \
	$(BIN)/python .ci/book_report.py || status=1; \
	$(BIN)/python .ci/prose_numbers.py || status=1; \
	exit $$status

bench-speed: setup
	$(BIN)/python benchmarks/sim_speed.py

# Slowdown with competing processes on the cores, old vs new thread defaults (about 1 min; busy-loops every core).
bench-contention: setup
	$(BIN)/python benchmarks/contention.py --twin

clean:
	rm -rf _build $(OUT) .pytest_cache   # _build holds the chapters' execution cache too
