#!/bin/bash
# The paired comparison and the engine check on the CamVid CPU protocol, as four
# sweeps run one after the other, each resumed where it stopped (run it again after any kill):
#   1. configs/sweep_camvid_signal.toml          contrastive / entropy / kmeans-entropy / random x seeds 0-4
#   2. configs/sweep_camvid_signal_lambda0.toml  contrastive with lambda = 0 x seeds 0-4 (no references)
#   3. configs/sweep_camvid_signal_lambda0_entropy.toml  entropy with lambda = 0 x seeds 0-4 (no references)
#   4. configs/sweep_camvid_engine.toml          contrastive, prefix budget, seeds 0-2 (the new engine
#                                                against benchmarks/results/camvid_cpu.json)
# From the repository root, in the background:
#   mkdir -p sweeps && nohup experiments/camvid_signal.sh > sweeps/camvid_signal.log 2>&1 &
# Then: fastal report sweeps/sweep_camvid_signal --baseline entropy --markdown, and the three
# comparison sweeps side by side: fastal report sweeps/sweep_camvid_signal \
#   sweeps/sweep_camvid_signal_lambda0 sweeps/sweep_camvid_signal_lambda0_entropy --baseline entropy --markdown
# Keep the code fixed while the sweeps run (e.g. a git worktree at one commit): a run resumed by
# other code would mix two versions of the selection.
set -u
FASTAL=${FASTAL:-fastal}
for name in sweep_camvid_signal sweep_camvid_signal_lambda0 sweep_camvid_signal_lambda0_entropy sweep_camvid_engine; do
  start=$(date +%s)
  if [ -f "sweeps/$name/sweep.json" ]; then
    $FASTAL sweep --resume "sweeps/$name" --workers 2
  else
    $FASTAL sweep "configs/$name.toml" --workers 2
  fi
  echo "$name: exit $? after $(( $(date +%s) - start )) s, $(date -u +%FT%TZ)"
done
