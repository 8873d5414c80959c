"""A handler with the protocol done by hand that answers "garbage" with a
line that is not JSON, and anything else with its pid."""
import json
import os
import sys

for line in sys.stdin:
    req = json.loads(line)
    if req["frames"] and req["frames"][0] == "garbage":
        sys.stdout.write("this is not json\n")
    else:
        sys.stdout.write(json.dumps({"outcome": "done", "reply": str(os.getpid())}) + "\n")
    sys.stdout.flush()
