"""`retinaunet-deploy serve`: a run's artifact behind a real Triton server (KServe v2 over
HTTP and gRPC).

    protocol.py      tensor names and the response encoding (numpy only)
    triton_model.py  the Python-backend model Triton runs: this package's `Predictor`
    repository.py    the model repository and backend folder, written to a temporary folder
    server.py        starts `tritonserver`, waits until ready, forwards SIGTERM, drains
    load.py          concurrent tritonclient clients: the load test and benchmark

Importing this package imports nothing heavy; the served model (`triton_model`) imports
numpy and the runtime only, never TensorFlow, as it runs in its own environment
(`make serve-env`: numpy 1.26, whose Python-backend stub returns correct tensors).
"""
