"""An example handler: prices an order.

Request (first frame, JSON): {"id": "A-1", "items": [{"sku": "x", "qty": 2}]}
Reply (JSON): {"id": "A-1", "total": 19.8}

Shows every outcome: a reply, fail (bad input, no retry), retry (the price
list is being reloaded: try again in 500 ms), drop (test orders), forward
(large orders go to service "review", subject "order"), and send (each
priced order is published on stream "orders" with subject "priced").

    worker
        runners
            pricing
                match = "^price$"
                command = "python3 example.py"
                dir = "runners/python"
                processes = "2"
"""
import os
import sys

import alaska_runner as alaska

PRICES = {"apple": 0.5, "pear": 0.7, "melon": 2.5}


def handle(req):
    try:
        order = req.json()
    except ValueError as e:
        return alaska.fail("not JSON: %s" % e)
    if not isinstance(order, dict) or "id" not in order:
        return alaska.fail("no order id")
    if order.get("test"):
        return alaska.drop()
    if os.path.exists("/tmp/alaska-example-reloading"):
        return alaska.retry(500, "price list reloading")
    total = 0.0
    for item in order.get("items", []):
        price = PRICES.get(item.get("sku"))
        if price is None:
            return alaska.fail("unknown sku %r" % item.get("sku"))
        total += price * int(item.get("qty", 1))
    if total > 1000:
        return alaska.forward("review", "order", req.body)
    # Goes to the worker's log, tagged with the runner and this pid.
    print("priced %s: %.2f (attempt %d)" % (order["id"], total, req.attempt), file=sys.stderr)
    priced = {"id": order["id"], "total": round(total, 2)}
    alaska.send("priced", priced, stream="orders")
    return priced


if __name__ == "__main__":
    alaska.run(handle)
