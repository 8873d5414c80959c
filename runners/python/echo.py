"""The smallest handler: replies with the request's first frame.

    worker
        runners
            echo
                match = "^echo$"
                command = "python3 echo.py"
                dir = "runners/python"
"""
import alaska_runner as alaska


def handle(req):
    return req.body


if __name__ == "__main__":
    alaska.run(handle)
