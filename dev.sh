#!/usr/bin/env bash
# MedXpert developer entry point.
#
#   ./dev.sh              set up .venv, then run the main job end to end
#   ./dev.sh test         set up .venv if needed, then ruff check + pytest
#   ./dev.sh setup        only create / update .venv
#   ./dev.sh data         summary of the shared data packs (results/data_summary.json)
#   ./dev.sh train        fine-tune the offline default encoder (models/medxpert-default)
#   ./dev.sh index        embed train+val cases into the case library (indexes/medxpert-default)
#   ./dev.sh eval         retrieval, fusion, blend-weight, thresholds, input guard, report-quality and context metrics
#   ./dev.sh r2gen        report quality under the R2Gen protocol (own model + library; not in all)
#   ./dev.sh tune         search fine-tuning settings with Optuna on val (not in the main job)
#   ./dev.sh search       sample searches: top-K tables, CSV and PNG grids (results/inference_plots)
#   ./dev.sh diagnose     structured reports for sample test X-rays and a text (results/reports)
#   ./dev.sh labels       report-labeler agreement with IU MeSH tags (benchmarks/)
#   ./dev.sh app          the Streamlit search-and-report UI on http://127.0.0.1:8501
#   ./dev.sh serve        the REST API on http://127.0.0.1:8000 (OpenAPI docs at /docs)
#   ./dev.sh help         this text
#
# Every step is idempotent and printed; any failure stops the script with a non-zero status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=".venv"
PY="$VENV/bin/python"
STAMP="$VENV/.medxpert-installed"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf '\033[31merror: %s\033[0m\n' "$*" >&2; exit 1; }

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

setup() {
  if [ ! -x "$PY" ]; then
    local python
    python=$(find_python) || fail "Python 3.11 is required (set PYTHON=/path/to/python3.11)."
    step "Creating virtual environment $VENV with $python"
    "$python" -m venv "$VENV"
  fi
  local want
  want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    step "Dependencies already installed in $VENV (requirements.txt unchanged)"
    return 0
  fi
  step "Installing pinned dependencies into $VENV (the first time takes a few minutes: torch)"
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet -r requirements.txt
  step "Installing the medxpert package (editable) and checking dependency consistency"
  "$PY" -m pip install --quiet --no-deps -e .
  "$PY" -m pip check
  echo "$want" > "$STAMP"
}

offline_env() {
  # Nothing in the default pipeline needs the Hugging Face hub; fail fast instead of waiting
  # on a network that is not there. Unset these to use hub models (ViT-B-32, BiomedCLIP, BLIP).
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
  export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
  export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
}

ensure_browser() {
  # The browser test drives Debian's chromium through chromedriver; install them when missing.
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    step "Installing Debian's chromium and chromium-driver for the browser test"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null ||
      { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
  else
    step "chromium / chromedriver not found and apt-get unusable: the browser test will skip"
  fi
}

ensure_dicom_tools() {
  # The DICOM SR and DICOM node tests run DCMTK (dsrdump, storescu, echoscu) and dicom3tools'
  # dciodvfy; install Debian's packages when missing.
  if command -v dsrdump >/dev/null 2>&1 && command -v storescu >/dev/null 2>&1 &&
     command -v dciodvfy >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    step "Installing Debian's dcmtk and dicom3tools for the DICOM SR and DICOM node tests"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools >/dev/null ||
      { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools >/dev/null; }
  else
    step "dcmtk / dicom3tools not found and apt-get unusable: the DICOM validator tests will skip"
  fi
}

run_tests() {
  offline_env
  ensure_browser
  ensure_dicom_tools
  step "ruff check"
  "$VENV/bin/ruff" check .
  step "pytest"
  "$PY" -m pytest "$@"
}

run_data() {
  offline_env
  step "Data summary of the shared packs -> results/data_summary.json"
  "$VENV/bin/medxpert" data summary --source nih_cxr14 --source iu_xray --source covid_cxr \
    --json results/data_summary.json
}

run_train() {
  offline_env
  step "Fine-tuning the offline default encoder on the paired studies -> models/medxpert-default"
  "$VENV/bin/medxpert" train --out models/medxpert-default
}

ensure_model() {
  [ -f models/medxpert-default/medxpert.json ] || run_train
}

index_is_current() {
  # the library exists and was built with the model now in models/ (same fingerprint)
  [ -f indexes/medxpert-default/manifest.json ] && "$PY" -c '
import json, sys
built_with = json.load(open("indexes/medxpert-default/manifest.json"))["encoder"]["fingerprint"]
model = json.load(open("models/medxpert-default/medxpert.json"))["fingerprint"]
sys.exit(built_with != model)'
}

ensure_index() {
  ensure_model
  if index_is_current; then
    step "Case library indexes/medxpert-default is current (./dev.sh index rebuilds it)"
  else
    run_index
  fi
}

run_index() {
  offline_env
  ensure_model
  step "Embedding the train+val cases into the case library -> indexes/medxpert-default (+ results/embeddings)"
  "$PY" scripts/save_embeddings.py --model models/medxpert-default --name medxpert-default
}

run_eval() {
  offline_env
  ensure_index
  step "Retrieval evaluation, study by study, on the test split -> results/retrieval_metrics.{json,csv,md,png}"
  "$VENV/bin/medxpert" eval retrieval --model models/medxpert-default --index medxpert-default
  step "How target both fuses reports and images, chosen on val -> indexes/medxpert-default/fusion.json, results/fusion_metrics.*"
  "$VENV/bin/medxpert" eval fusion
  step "Zero-shot blend weight, chosen on val, measured on test -> indexes/medxpert-default/blend.json, results/blend_metrics.*"
  "$VENV/bin/medxpert" eval blend
  step "Per-finding reporting thresholds, chosen on val -> indexes/medxpert-default/thresholds.json, results/thresholds.md"
  "$VENV/bin/medxpert" eval thresholds
  step "Input guard: the embedding check fitted on the library, threshold on val -> indexes/medxpert-default/guard.npz"
  "$VENV/bin/medxpert" eval guard
  step "Report quality: prose writer vs read-out, top-1 and random reports -> results/report_metrics.{json,csv,md,png}"
  "$VENV/bin/medxpert" eval reports
  step "Clinical context A/B, X-ray alone vs X-ray + note -> results/context_metrics.{json,csv,md,png}"
  "$VENV/bin/medxpert" eval context
}

run_search() {
  offline_env
  ensure_index
  local queries=(--sample 3 --text "cardiomegaly with pleural effusion"
                 --text "left lower lobe consolidation" -k 5 --target both)
  step "Search by text (scripts/run_search_engine.py)"
  "$PY" scripts/run_search_engine.py --text "small right pneumothorax" -k 5
  step "Sample searches, 3 test X-rays + 2 texts -> results/inference_plots/inference_topk.csv"
  "$PY" scripts/inference_to_csv.py "${queries[@]}"
  step "The same searches as PNG grids -> results/inference_plots/*.png"
  "$PY" scripts/inference_plot.py "${queries[@]}"
}

run_tune() {
  offline_env
  step "Optuna search of the fine-tuning settings on val -> results/tune/ (optuna.db, plots)"
  "$VENV/bin/medxpert" tune "$@"
}

run_r2gen() {
  offline_env
  step "R2Gen protocol: fine-tuning on R2Gen's IU X-ray train split only -> models/medxpert-r2gen"
  if [ -f models/medxpert-r2gen/medxpert.json ]; then
    echo "models/medxpert-r2gen exists (delete it to retrain)"
  else
    "$VENV/bin/medxpert" train --source iu_xray_r2gen --out models/medxpert-r2gen
  fi
  step "Library of R2Gen's train studies -> indexes/medxpert-r2gen"
  "$VENV/bin/medxpert" index build --model models/medxpert-r2gen --name medxpert-r2gen \
    --source iu_xray_r2gen --split train
  step "Reporting thresholds on R2Gen's val split"
  "$VENV/bin/medxpert" eval thresholds --protocol r2gen --model models/medxpert-r2gen \
    --index medxpert-r2gen --out results/thresholds_r2gen
  step "Report quality on R2Gen's test split -> results/report_metrics_r2gen.{json,csv,md,png}"
  "$VENV/bin/medxpert" eval reports --protocol r2gen --model models/medxpert-r2gen \
    --index medxpert-r2gen
}

run_labels() {
  offline_env
  step "Report-labeler agreement with IU X-ray MeSH tags -> results/labeler_agreement.*"
  "$PY" benchmarks/labeler_agreement.py
}

run_diagnose() {
  offline_env
  ensure_index
  step "Diagnosing 3 test X-rays (one with a clinical note) and a text query -> results/reports/"
  "$PY" scripts/run_inference_pipeline.py --sample 2 --json results/reports --markdown
  local covid
  covid=$("$PY" -c 'from medxpert.data import load_cases
print(next(c.image_path for c in load_cases("covid_cxr", "test") if c.has_image))')
  "$PY" scripts/run_inference_pipeline.py --image "$covid" \
    --note "Fever, dry cough and shortness of breath for five days." \
    --json results/reports/covid_test_with_note.json --markdown
  "$PY" scripts/run_inference_pipeline.py --text "Enlarged heart with bilateral pleural effusions" \
    --json results/reports/text_query.json --markdown
}

run_app() {
  offline_env
  ensure_index
  local port="${MEDXPERT_APP_PORT:-8501}"
  step "Streamlit UI on http://127.0.0.1:$port (Ctrl-C stops it)"
  "$VENV/bin/medxpert" app --host 127.0.0.1 --port "$port"
}

run_serve() {
  offline_env
  ensure_index
  step "REST API on http://127.0.0.1:${MEDXPERT_API_PORT:-8000} (docs at /docs; Ctrl-C stops it)"
  "$VENV/bin/medxpert" serve --host 127.0.0.1 --port "${MEDXPERT_API_PORT:-8000}" "$@"
}

main_job() {
  run_data
  if [ -f models/medxpert-default/medxpert.json ]; then
    step "Fine-tuned encoder already in models/medxpert-default (./dev.sh train retrains it)"
  else
    run_train
  fi
  ensure_index
  run_eval
  run_search
  run_diagnose
  step "Main job finished; results are under results/"
}

usage() { sed -n "2,20p" "$0" | sed 's/^# \{0,1\}//'; }

command="${1:-all}"
[ $# -gt 0 ] && shift
case "$command" in
  all)    setup; main_job ;;
  setup)  setup ;;
  test)   setup; run_tests "$@" ;;
  data)   setup; run_data ;;
  train)  setup; run_train ;;
  index)  setup; run_index ;;
  eval)   setup; run_eval ;;
  search) setup; run_search ;;
  diagnose) setup; run_diagnose ;;
  labels) setup; run_labels ;;
  tune)   setup; run_tune "$@" ;;
  r2gen)  setup; run_r2gen ;;
  app)    setup; run_app ;;
  serve)  setup; run_serve "$@" ;;
  help|-h|--help) usage ;;
  *) usage; fail "unknown command '$command'" ;;
esac
