#!/usr/bin/env bash
# The FIM ablation (general base, FIM twin, AR twin) four times: on the twins' training data as the presets use it,
# and with each of its three data choices undone alone (docs/ablations.md, "Each data change alone"):
#   all       code as pieces of <= 1,500 characters, generated files and near-duplicates out, torch's Python in code
#   kept      generated files and near-duplicates kept (a corpus built with `codellama-corpus --keep-duplicates`)
#   files     whole files that fit (<= scale.base_max_doc_chars), not pieces
#   nopython  the code source without its Python files
# Every run is scored on the same held-out infilling set (the default corpus's), and prints one table row.
# Each run is an ordinary codellama-ablate run: rerunning the script skips what is finished and resumes the rest.
#
#   bash bench/ablate_data_changes.sh                          # ablate=full: about 16 minutes per run on 2 cores
#   RUNS="all kept" bash bench/ablate_data_changes.sh ablate=smoke   # extra arguments go to every codellama-ablate
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ABLATE="${ABLATE:-.venv/bin/codellama-ablate}"
CORPUS="${CORPUS:-.venv/bin/codellama-corpus}"
PYTHON="${PYTHON:-.venv/bin/python}"
ROOT="${ROOT:-runs/data_changes}"
RUNS="${RUNS:-all kept files nopython}"
fim_only=("~ablations.lcft" "~ablations.python" "~arms.code_more" "~arms.lcft_theta1e4" "~arms.lcft_theta1e6"
          "~arms.python" "~arms.fim_psm_only" "ablations.fim.psm_only=null")
case "$ROOT" in /*) ;; *) ROOT="$(pwd)/$ROOT" ;; esac
kept_corpus="$ROOT/corpus_kept/corpus-v2"

for run in $RUNS; do
  case "$run" in
    all)      change=() ;;
    kept)     [ -f "$kept_corpus/manifest.json" ] || "$CORPUS" "$kept_corpus" --keep-duplicates
              change=("code_pieces.code.paths=[$kept_corpus/code/train_pieces-*.jsonl]"
                      "code_pieces.code.val_paths=[$kept_corpus/code/val_pieces-*.jsonl]") ;;
    files)    change=('code_pieces.code.paths=[${cache_dir}/corpus-v2/code/train-*.jsonl]'
                      'code_pieces.code.val_paths=[${cache_dir}/corpus-v2/code/val-*.jsonl]') ;;
    nopython) change=('common=["data.sources.code.filters=[{field: kind, values: [c_cpp, cuda, shell, other]}]"]') ;;
    *)        echo "ablate_data_changes: unknown run '$run' (all, kept, files, nopython)" >&2; exit 2 ;;
  esac
  shown="${change[*]}"
  echo "== $run: ${shown:-the data the presets read}"
  "$ABLATE" run_dir="$ROOT/$run" "${fim_only[@]}" "${change[@]}" "$@" | tail -4
done

"$PYTHON" - "$ROOT" $RUNS <<'EOF'
import json, sys
root, runs = sys.argv[1], sys.argv[2:]
interval = lambda x: f"{x['value']:.4f} [{x['low']:.4f}, {x['high']:.4f}]"
print("| run | AR middle loss | PSM middle loss | psm/ar [95%] | gain psm, other suffix [95%] | gain spm, other | "
      "gain psm, empty | exact psm / spm / ar | gain psm, other, along the curve |")
print("|---|---|---|---|---|---|---|---|---|")
for run in runs:
    results = json.load(open(f"{root}/{run}/results.json"))
    fim, curve = results["fim"], results["fim_curve"]["fim"]
    loss, gain, exact = fim["infill_loss"], fim["suffix_gain"], fim["exact_match"]
    print(f"| {run} | {loss['ar']['value']:.3f} | {loss['fim_psm']['value']:.3f} | "
          f"{interval(fim['infill_loss_ratio']['fim_psm/ar'])} | {interval(gain['psm_other'])} | "
          f"{gain['spm_other']['value']:.4f} | {gain['psm']['value']:.4f} | "
          f"{exact['fim_psm']['value']:.3f} / {exact['fim_spm']['value']:.3f} / {exact['ar']['value']:.3f} | "
          + ", ".join(f"{p['suffix_gain']['psm_other']['value']:.4f}" for p in curve) + " |")
EOF
