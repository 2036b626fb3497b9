#!/bin/bash
# Regenerates the listings of docs/first-hour.md into ./first-hour/ (run from an empty folder;
# needs the bundled model; about 15 minutes on 2 idle cores, most of it the quick demo).
set -u
mkdir -p first-hour short && cd first-hour
echo "Only a few words of text." > ../short/a.txt
run() { name=$1; shift; { echo "\$ mindscope $*"; mindscope "$@" 2>&1; echo "exit $?"; } > "$name.txt"; }
run models models
run demo demo --quick -o runs/demo
run saelist sae list
run saeeval sae eval --sae smollm2-135m-instruct/resid_post.15/topk-1152 --store runs/demo/harvest -q
run search features search --sae smollm2-135m-instruct/resid_post.15/topk-1152 --token " the" --top 3 -q
run err_top features search --sae runs/demo/sae/topk --explanation code --top -3
run err_nofolder features search --sae runs/demo/sae/nope --explanation code
run err_hub sae eval --sae google/gemma-scope-2b-pt-res --store runs/demo/harvest
run lens lens run -p "The capital of France is" -t Paris -k 3
run lens2 lens run -p "The capital of France is" --target " Paris" -k 3
run extract vector extract --word music --sites resid_post.10 -o music -q
run generate generate -p "Tell me about your day." --steer music.safetensors:8 -n 24 -q
run eval1 eval sample --limit 2 -n 16 --steer music.safetensors:4 -o runs/eval -q
run eval1b eval sample --limit 2 -n 16 --steer music.safetensors:4 -o runs/eval -q
run eval2 eval sample --limit 2 -n 16 --steer music.safetensors:2 -o runs/eval -q
run err_limit eval sample --limit -2
run err_site harvest --sites resid_post.40 --out x
run err_tokens harvest --tokens -5 --out x
run err_sae sae eval --sae /no/such/folder --store runs/demo/harvest
run err_items eval bad.jsonl
run err_short harvest --corpus ../short --tokens 256 --window 128 --out short-store -q
