"""OpenAI-compatible server: ``create_app(engine, model_name=...)`` and ``ServerThread`` to run it."""

from adnanny_serve.server.protocol import ApiError, Limits

__all__ = ["ApiError", "Limits", "ServerThread", "create_app"]


def __getattr__(name: str):  # fastapi/uvicorn are imported only when the server is used
    if name == "create_app":
        from adnanny_serve.server.app import create_app

        return create_app
    if name == "ServerThread":
        from adnanny_serve.server.run import ServerThread

        return ServerThread
    raise AttributeError(name)
