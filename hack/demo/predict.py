"""Ask the demo's ModelDeployment for predictions from inside the cluster.

Runs in a pod (hack/demo.sh): reads a few rows of the served model's input example
from MLflow, sends them to the model server through its Service, prints both.
"""

import json
import os
import urllib.request

import mlflow

ns = os.environ["DEMO_NAMESPACE"]
tracking = os.environ["MLFLOW_TRACKING_URI"]
service = f"http://churn.{ns}.svc.cluster.local/invocations"

client = mlflow.MlflowClient(tracking)
version = client.get_model_version_by_alias("churn", "champion").version
mlflow.set_tracking_uri(tracking)
rows = mlflow.pyfunc.load_model(f"models:/churn/{version}").input_example.head(3)
body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}, default=str).encode()
request = urllib.request.Request(service, data=body, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as response:
    answer = json.loads(response.read())
print(f"churn@champion is version {version}; rows sent to {service}:")
print(rows.to_string())
print("predictions:", json.dumps(answer["predictions"]))
print("request body:", body.decode())
