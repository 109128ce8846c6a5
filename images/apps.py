from django.apps import AppConfig


class ImagesConfig(AppConfig):
    name = "images"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.services import model_catalog_register
        from images.selectors import model_ids_known

        # accounts checks a key's allowed_models against the registry through this lookup.
        model_catalog_register(model_ids_known)

        # Declare every configured GPU queue on this process's broker, so the
        # web tier can enqueue to them and workers can consume them.
        import dramatiq
        from django.conf import settings

        broker = dramatiq.get_broker()
        for queue in settings.GPU_QUEUES:
            broker.declare_queue(queue)

        # A short poll of a queued or running task is answered before Django when it
        # can be (images/task_poll.py; the ASGI server only; TASK_POLL_FAST).
        from core.waiting import fast_route_register
        from images.task_poll import TASK_PATH, task_poll_answer

        fast_route_register(TASK_PATH, task_poll_answer)
