"""The baseline for bench/ingest.py: a bare Flask endpoint that reads the body and answers 201."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/api/v1/signals")
def accept():  # type: ignore[no-untyped-def]
    request.get_data()
    return jsonify({"id": 1, "status": "pending"}), 201
