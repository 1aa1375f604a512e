from hone.evaluation.metrics import exact_match, json_match, parse_json_answer, pick_metric


def test_json_match_compares_parsed_fields_and_tolerates_fences():
    ref = '{"name": "Ana Silva", "quantity": 3}'
    assert json_match('```json\n{"quantity": 3, "name": "Ana Silva"}\n```', ref) == 1.0
    assert json_match('Sure! {"name": "Ana Silva", "quantity": "3"}', ref) == 0.0
    assert json_match("no json here", ref) == 0.0
    assert parse_json_answer('x {"a": [1, 2]} y') == {"a": [1, 2]}


def test_exact_match_ignores_whitespace_only():
    assert exact_match("  Paris \n", "Paris") == 1.0
    assert exact_match("paris", "Paris") == 0.0


def test_metric_is_picked_from_references():
    assert pick_metric(['{"a": 1}', '{"a": 2}']) == "json_match"
    assert pick_metric(['{"a": 1}', "Paris"]) == "exact_match"
