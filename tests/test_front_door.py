"""The front door: a script that imports only `hone` trains, evaluates and chats."""
from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
import hone

train, test, model, out = sys.argv[1:5]
result = hone.train(data=train, test=test, model=model, max_steps=2, output=out, seed=7,
                    train__threads=1, train__batch_size=4, train__micro_batch_size=4, eval__forgetting=False)
evaluation = hone.evaluate(result.run_dir, data=test, perplexity=False)
reply = hone.Predictor(result.run_dir).chat([{"role": "user", "content": "Say river"}], max_new_tokens=4)
print(json.dumps({"run_dir": str(result.run_dir), "metric": result.metric, "base": result.base_score,
                  "tuned": result.tuned_score, "seed": hone.load_config(out + "/config.yaml").train.seed,
                  "eval_n": evaluation.to_json()["n"], "reply": reply,
                  "all": sorted(hone.__all__)}))
"""


def test_a_script_importing_only_hone_trains_evaluates_and_chats(tiny_model, chat_files, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(chat_files["train"]), str(chat_files["test"]),
                           str(tiny_model), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown["run_dir"] == str(out) and shown["metric"] in ("exact_match", "json_match")
    assert shown["base"] is not None and shown["tuned"] is not None
    assert shown["seed"] == 7 and isinstance(shown["reply"], str) and shown["eval_n"] > 0
    assert {"train", "evaluate", "plan", "check_data", "load_config", "Predictor"} <= set(shown["all"])


def test_unknown_setting_is_refused_with_the_nearest_flag():
    import pytest

    import hone
    from hone.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        hone.load_config(max_step=3)
