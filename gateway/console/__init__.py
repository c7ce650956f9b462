"""The web console the gateway serves on its own port (``--console``): plain HTML, CSS and JS
files (``static/``, no build step, no network needed), a JSON API over the broker
(``api``), records decoded for people (``records``), and the live tail of a partition over
WebSocket with trio-websocket (``tail``, on ``--console-ws``)."""
