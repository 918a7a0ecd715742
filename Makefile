# The two set-up commands of the README: `make demo` and `make test`. Both create/reuse .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := data/sample
DEMO_PHOTOS := outputs/photos
# The demo's own Dagster instance, whatever DAGSTER_HOME the shell exports (a cluster's, say): `make demo` records
# into it and `make clean-demo` deletes it; `make ui` shows $DAGSTER_HOME when set, else this one.
DEMO_HOME := $(CURDIR)/.dagster_home
DAGSTER_HOME ?= $(DEMO_HOME)
UI_PORT ?= 3000

.PHONY: install demo ui mlflow-ui test bench gpu-carry clean-demo cluster-demo cluster-down

# facenet-pytorch is installed without its dependencies (it pins an old torch and imports torchvision):
# only the MTCNN weight files it ships are read; the package is never imported.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole Dagster asset graph, in-process, recorded in .dagster_home (what `make ui` shows); then
# photo mode on three composed photos (every face replaced or covered in place, checked face by face).
demo: install
	$(BIN)/falco sample-data $(DEMO_DATA) --photos $(DEMO_PHOTOS)/input
	DAGSTER_HOME=$(DEMO_HOME) $(BIN)/falco pipeline --input $(DEMO_DATA)/images --profile tiny
	# the run above is dvc.yaml's three stages on its vars: record it in dvc.lock, or the first `dvc repro` re-checks
	# every stage (DVC needs a git checkout)
	if git rev-parse --git-dir > /dev/null 2>&1; then $(BIN)/dvc commit --force --quiet dvc.yaml; fi
	$(BIN)/falco anonymize $(DEMO_PHOTOS)/input $(DEMO_PHOTOS)/anonymized --mode photo --profile tiny --quiet

# SIGINT back to its default first: a background job (`make ui &` in a script) starts with it ignored, and `dagster
# dev` gives SIGTERM what SIGINT has, so it ignored both and only SIGKILL stopped it.
ui: install
	DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/python -c 'import os, signal, sys; signal.signal(signal.SIGINT, \
	signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' $(BIN)/dagster dev -m orchestration.definitions \
	-h 127.0.0.1 -p $(UI_PORT)

# MLflow 3 opens in its GenAI view; the link below (and the ones `falco pipeline` prints) open the runs instead.
mlflow-ui: install
	@echo "MLflow UI: open http://127.0.0.1:5000/#/?workflowType=machine_learning (the model-training view)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db -h 127.0.0.1 -p 5000

# The cluster on this machine, without Docker (README: Cluster): PostgreSQL, Redis (Debian's packages, installed when
# missing), an MLflow server, one cpu and one gpu worker; the demo graph through the Celery executor, its checks, and
# everything stopped by PID. `make cluster-down` stops what an interrupted demo left running.
cluster-demo: install
	$(BIN)/falco sample-data $(DEMO_DATA)
	$(BIN)/falco cluster demo --input $(DEMO_DATA)/images

cluster-down: install
	$(BIN)/falco cluster down

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/batched_vs_loop.py
	$(BIN)/python bench/pairing_faiss_vs_sklearn.py
	$(BIN)/python bench/flops.py

# What bench/gpu_session.sh needs on a bare GPU image (Python 3.12 with torch): the wheels of facenet-pytorch (MTCNN
# weights) and dlib-bin (the reference the parity tests compare with), and the two dlib model files the tests read
# (32 MB of face-recognition-models' 130). 38 MB in .gpu/, under the device tool's 64 MiB.
gpu-carry: install
	rm -rf .gpu && mkdir -p .gpu/site/face_recognition_models/models
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/wheels \
	  facenet-pytorch==2.6.0 dlib-bin==20.0.1.post1
	models=$$($(BIN)/python -c "import importlib.util as u; \
	  print(next(iter(u.find_spec('face_recognition_models').submodule_search_locations)))")/models; \
	  cp $$models/dlib_face_recognition_resnet_model_v1.dat $$models/shape_predictor_5_face_landmarks.dat \
	  .gpu/site/face_recognition_models/models/
	touch .gpu/site/face_recognition_models/__init__.py

# What `make demo` wrote: the stored assets, the Dagster instance and the default MLflow store (runs of `falco
# pipeline` without MLFLOW_TRACKING_URI go there too). The sample data stays: it is the DVC-tracked input.
clean-demo:
	rm -rf outputs/pipeline $(DEMO_PHOTOS) $(DEMO_HOME) mlflow.db mlflow.db-wal mlflow.db-shm .mlflow.db.lock mlruns
