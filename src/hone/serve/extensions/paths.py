"""What keeps the server's folders out of the answers of /v1/hone."""
from __future__ import annotations

import json
from pathlib import Path

from fastapi import Request

from hone.serve import db


def without_server_paths(request: Request, data):
    """`data` with the server's folders named as the API names them: a base model's folder by its model name,
    a job's run folder by the job id. Where the operator keeps things is not a client's business."""
    text = json.dumps(data, default=str)
    names = {str(Path(spec).resolve()): name for name, spec in request.app.state.settings.base_models.items()
             if "/" in spec}
    names[str(db.state_dir("jobs").resolve())] = "jobs"
    for folder, name in sorted(names.items(), key=lambda pair: -len(pair[0])):
        text = text.replace(json.dumps(folder)[1:-1], name)
    return json.loads(text)
