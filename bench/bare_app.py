"""The ceiling for this stack: bare Flask under the same gunicorn settings as Waygate,
answering the same /health JSON and echoing a POST body. Nothing else."""

from datetime import UTC, datetime

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/health")
def health():
    return jsonify(
        {
            "status": "healthy",
            "checks": {"database": "ok", "cache": "ok", "filesystem": "ok", "plugins": "ok"},
            "version": "2.0.0",
            "uptime_seconds": 0,
            "timestamp": datetime.now(UTC).isoformat(),
        }
    )


@app.post("/echo")
def echo():
    return jsonify(request.get_json())
