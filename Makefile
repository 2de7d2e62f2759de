# The contract: `make demo` and `make test` set up what is missing, then run.
# Set-up is driven by a stamp file, so a second run reinstalls nothing.
PYTHON ?= python3.11
VENV ?= .venv
STAMP := $(VENV)/.revperception-setup
SETUP_INPUTS := requirements.txt requirements-ros.txt constraints.txt setup.py setup.cfg \
	scripts/setup_env.sh scripts/build_vision_msgs.sh $(wildcard interfaces/vision_msgs/msg/*.msg) \
	interfaces/vision_msgs/CMakeLists.txt
export YOLO_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo demo-model prune-real test test-fast lint clean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	PYTHON=$(PYTHON) scripts/setup_env.sh $(VENV)
	touch $@

demo: setup
	$(VENV)/bin/revperception demo

# The demo checkpoint from nothing: synthetic scenes, YOLOv5n trained by Ultralytics, then `revperception prune`.
demo-model: setup
	$(VENV)/bin/python -m revperception.tools.demo_model --out models/demo-yolov5n.rvp.safetensors

# The real-data recipe (docs/offline-pipeline.md): YOLOv5n release pruned on ../shared's COCO images, judged on a
# test split no choice sees, beside the dense model's resolution front. Writes OUT, its report and plot.
SHARED ?= ../shared
OUT ?= runs/real/yolov5n.rvp.safetensors
SPLIT = $(dir $(OUT))split
PRUNE_REAL_ARGS ?= --sparsity 0.26 --level-imgsz 416 --allocation params --round-to 8 --epochs 10 --patience 3
prune-real: setup
	@test -f $(SHARED)/models/yolov5n.pt || { echo "prune-real: $(SHARED)/models/yolov5n.pt is absent"; exit 2; }
	$(VENV)/bin/revperception split --out $(SPLIT) --val 0.25 --test 0.25 \
		--data $(SHARED)/data/coco128-train/data.yaml --data $(SHARED)/data/coco-extra/data.yaml \
		--unlabelled $(SHARED)/data/coco-extra/images/unlabelled --unlabelled $(SHARED)/data/drive-udacity/images
	$(VENV)/bin/revperception prune --weights $(SHARED)/models/yolov5n.pt --data $(SPLIT)/data.yaml --out $(OUT) \
		$(PRUNE_REAL_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# `make test` is the whole suite (what CI runs) and lists its slowest tests; `make test-fast` leaves out the tests
# marked slow, for the edit-test loop. pytest exits 5 when it collects no tests: say so, and fail (a suite that
# runs nothing is broken).
PYTEST = pytest() { $(VENV)/bin/python -m pytest "$$@"; rc=$$?; \
	[ $$rc -ne 5 ] || echo "make $@: pytest collected no tests" >&2; return $$rc; }; pytest

test: lint
	@$(PYTEST) --durations=15 $(PYTEST_ARGS)

test-fast: lint
	@$(PYTEST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build demo-out .pytest_cache
