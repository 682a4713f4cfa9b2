"""Stand-in for modules/api/api.py: base64 images, --api-auth, and txt2img with ``alwayson_scripts``.

``init_default_script_args`` reads each script's ``ui()`` control values inside gradio Blocks;
``init_script_args`` copies each ``alwayson_scripts[<title, any case>]["args"]`` positionally into the
script's slice (the shorter of the two lengths), unconverted; exceptions become JSON errors with status 500
(or the HTTPException's own) through the same handler shape as the real middleware.
"""

import base64
import io
from secrets import compare_digest

import gradio as gr
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from modules import processing, shared
from PIL import Image


def decode_base64_to_image(encoding):
    """A PIL image from base64 text (a data: URL prefix is allowed); HTTP 500 for bad data."""
    if encoding.startswith("http://") or encoding.startswith("https://"):
        raise HTTPException(status_code=500, detail="Invalid image url")
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoding)))
        return image
    except Exception as e:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from e


def encode_pil_to_base64(image):
    with io.BytesIO() as output_bytes:
        image.save(output_bytes, format="PNG")
        return base64.b64encode(output_bytes.getvalue())


def script_name_to_index(name, scripts):
    try:
        return [script.title().lower() for script in scripts].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def api_middleware(app: FastAPI):
    def handle_exception(request: Request, e: Exception):
        err = {
            "error": type(e).__name__,
            "detail": vars(e).get("detail", ""),
            "body": vars(e).get("body", ""),
            "errors": str(e),
        }
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=jsonable_encoder(err))

    @app.middleware("http")
    async def exception_handling(request: Request, call_next):
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    @app.exception_handler(Exception)
    async def fastapi_exception_handler(request: Request, e: Exception):
        return handle_exception(request, e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException):
        return handle_exception(request, e)


class Api:
    def __init__(self, app: FastAPI, queue_lock):
        self.credentials = {}
        if shared.cmd_opts.api_auth:
            for auth in shared.cmd_opts.api_auth.split(","):
                user, password = auth.split(":")
                self.credentials[user] = password

        self.router = APIRouter()
        self.app = app
        self.queue_lock = queue_lock
        api_middleware(self.app)
        self.add_api_route("/sdapi/v1/txt2img", self.text2imgapi, methods=["POST"])

    def add_api_route(self, path: str, endpoint, **kwargs):
        if shared.cmd_opts.api_auth:
            return self.app.add_api_route(path, endpoint, dependencies=[Depends(self.auth)], **kwargs)
        return self.app.add_api_route(path, endpoint, **kwargs)

    def auth(self, credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        if credentials.username in self.credentials:
            if compare_digest(credentials.password, self.credentials[credentials.username]):
                return True

        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    def get_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None

        script_idx = script_name_to_index(script_name, script_runner.scripts)
        return script_runner.scripts[script_idx]

    def init_default_script_args(self, script_runner):
        last_arg_index = 1
        for script in script_runner.scripts:
            if last_arg_index < script.args_to:
                last_arg_index = script.args_to
        script_args = [None] * last_arg_index
        script_args[0] = 0

        with gr.Blocks():
            for script in script_runner.scripts:
                if script.ui(script.is_img2img):
                    ui_default_values = []
                    for elem in script.ui(script.is_img2img):
                        ui_default_values.append(elem.value)
                    script_args[script.args_from : script.args_to] = ui_default_values
        return script_args

    def init_script_args(self, request: dict, default_script_args, script_runner):
        script_args = default_script_args.copy()

        alwayson_scripts = request.get("alwayson_scripts") or {}
        for alwayson_script_name in alwayson_scripts.keys():
            alwayson_script = self.get_script(alwayson_script_name, script_runner)
            if alwayson_script is None:
                raise HTTPException(
                    status_code=422, detail=f"always on script {alwayson_script_name} not found"
                )
            if alwayson_script.alwayson is False:
                raise HTTPException(
                    status_code=422, detail="Cannot have a selectable script in the always on scripts params"
                )
            if "args" in alwayson_scripts[alwayson_script_name]:
                args = alwayson_scripts[alwayson_script_name]["args"]
                for idx in range(0, min((alwayson_script.args_to - alwayson_script.args_from), len(args))):
                    script_args[alwayson_script.args_from + idx] = args[idx]
        return script_args

    def text2imgapi(self, txt2imgreq: dict):
        from modules import scripts

        script_runner = scripts.scripts_txt2img
        default_script_args = self.init_default_script_args(script_runner)
        script_args = self.init_script_args(txt2imgreq, default_script_args, script_runner)

        fields = {
            k: v
            for k, v in txt2imgreq.items()
            if k not in ("alwayson_scripts", "script_name", "script_args", "send_images", "save_images")
        }
        with self.queue_lock:
            p = processing.StableDiffusionProcessingTxt2Img(**fields)
            p.scripts = script_runner
            p.script_args = tuple(script_args)
            shared.state.begin(job="scripts_txt2img")
            try:
                processed = processing.process_images(p)
            finally:
                shared.state.end()

        b64images = [encode_pil_to_base64(image).decode() for image in processed.images]
        return {"images": b64images, "parameters": txt2imgreq, "info": processed.js()}
