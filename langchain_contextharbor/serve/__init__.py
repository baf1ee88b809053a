"""``contextharbor serve``: one router for every app on the machine, over HTTP."""
