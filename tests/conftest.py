import os

# Quiet TensorFlow's C++ start-up logs in test output; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
