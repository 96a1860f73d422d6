import subprocess
import sys


def test_runtime_never_imports_torch():
    code = ("import sys, xray_features, pipelines, pipelines.run, pipelines.score, "
            "pipelines.calibrate, pipelines.export, xray_features.cnn; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
