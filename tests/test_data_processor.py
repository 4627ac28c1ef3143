"""DataProcessor through /mcp/execute: JSON, CSV and XML, validation, limits, hostile XML."""

import json

import pytest

from tests.test_http import assert_envelope

RESPONSE_KEYS = {"status", "result", "error", "duration_ms", "command_id", "timestamp"}


def assert_failed(response, status):
    """A command that refused its input: the MCPResponse, status failed, with a 4xx."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) - {"details"} == RESPONSE_KEYS  # details: what the refusal adds
    assert body["status"] == "failed" and body["result"] is None
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<lolz>&lol3;</lolz>"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><r>&xxe;</r>"""


@pytest.fixture
def call(make_app, keys):
    client = make_app().test_client()

    def post(action="process_data", **params):
        return client.post(
            "/mcp/execute", json={"action": action, "params": params}, headers=keys.headers()
        )

    post.client = client
    return post


def test_the_spec_example_gets_a_clear_answer_not_a_500(call):
    response = call(input="sample data", format="json")
    error = assert_failed(response, 400)
    assert error == "input is not valid json: Expecting value (line 1, column 1, position 0)"


def test_the_spec_example_with_validate_reports_invalid_and_where(call):
    response = call(
        input="sample data", format="json", options={"validate": True, "transform": False}
    )
    assert response.status_code == 200
    result = response.get_json()["result"]
    assert result["metadata"]["valid"] is False
    assert result["metadata"]["errors"][0] == {
        "message": "Expecting value",
        "line": 1,
        "column": 1,
        "position": 0,
    }


def test_valid_json_reports_records_and_fields(call):
    data = [{"host": "a", "cpu": 1}, {"host": "b", "mem": 2}]
    result = call(input=json.dumps(data), options={"validate": True}).get_json()["result"]
    assert result["metadata"]["valid"] is True
    assert result["metadata"]["records"] == 2
    assert result["metadata"]["fields"] == ["host", "cpu", "mem"]
    assert result["data"] == data


def test_json_error_position_is_reported(call):
    result = call(input='{"a": 1,\n "b": }', options={"validate": True}).get_json()["result"]
    error = result["metadata"]["errors"][0]
    assert (error["line"], error["column"], error["position"]) == (2, 7, 15)


def test_csv_is_normalised_to_records(call):
    result = call(
        input="host,cpu\nweb1,0.5\nweb2,0.7\n", format="csv", options={"transform": True}
    ).get_json()["result"]
    assert result["data"] == [{"host": "web1", "cpu": "0.5"}, {"host": "web2", "cpu": "0.7"}]
    assert result["metadata"]["records"] == 2 and result["metadata"]["fields"] == ["host", "cpu"]


def test_ragged_csv_names_the_line(call):
    error = assert_failed(call(input="a,b\n1,2\n3\n", format="csv"), 400)
    assert "row has 1 fields; the header has 2 (line 3" in error


def test_xml_is_normalised_to_records(call):
    xml = (
        "<hosts><host id='1'><name>web1</name></host><host id='2'><name>web2</name></host></hosts>"
    )
    result = call(input=xml, format="xml", options={"transform": True}).get_json()["result"]
    assert result["data"] == [{"id": "1", "name": "web1"}, {"id": "2", "name": "web2"}]


@pytest.mark.parametrize("document", [BOMB, EXTERNAL])
def test_xml_entities_are_refused(call, document):
    error = assert_failed(call(input=document, format="xml"), 400)
    assert "DTDs and entities are not allowed" in error
    assert "root:" not in error


def test_malformed_xml_names_the_position(call):
    error = assert_failed(call(input="<a><b></a>", format="xml"), 400)
    assert "(line 1, column" in error


def test_input_over_max_size_is_413(make_app, keys):
    client = make_app(plugin_config={"DataProcessor": {"max_size": 100}}).test_client()
    response = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json={"action": "process_data", "params": {"input": "x" * 101, "format": "csv"}},
    )
    error = assert_failed(response, 413)
    assert error == "input is 101 bytes; the limit is 100"


def test_unknown_format_is_invalid_with_the_choices(call):
    error = assert_envelope(call(input="x", format="yaml"), 400, "INVALID_REQUEST")
    assert "format" in error["details"]["params"]


def test_analyze_profiles_a_data_set(call):
    csv = "host,cpu,region\nweb1,0.5,eu\nweb2,1.5,eu\nweb3,,us\nweb4,2.5,eu\n"
    result = call("analyze", input=csv, format="csv").get_json()["result"]
    assert result["rows"] == 4 and result["columns"] == 3
    cpu = result["fields"]["cpu"]
    assert cpu["type"] == "number" and cpu["nulls"] == 1
    assert (cpu["min"], cpu["max"], cpu["mean"]) == (0.5, 2.5, 1.5)
    region = result["fields"]["region"]
    assert region["distinct"] == 2 and region["top_values"][0] == {"value": "eu", "count": 3}


def test_analyze_json_types(call):
    data = [{"n": 1, "ok": True, "tag": "a"}, {"n": 2.5, "ok": False, "tag": None}]
    fields = call("analyze", input=json.dumps(data)).get_json()["result"]["fields"]
    assert fields["n"]["type"] == "mixed" and fields["n"]["mean"] == 1.75
    assert fields["ok"]["type"] == "boolean" and "mean" not in fields["ok"]
    assert fields["tag"]["nulls"] == 1
