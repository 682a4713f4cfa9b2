"""Stand-in for Forge's modules/sd_hijack.py (dfdcbab6; Forge Neo 283cb2c4 alike): a stub kept for old
extensions. ``model_hijack`` has no ``embedding_db``, no ``comments`` and no ``extra_generation_params``: the
text engines live on the model (backend/diffusion_engine/sdxl.py)."""


class StableDiffusionModelHijack:
    def apply_optimizations(self, option=None):
        pass

    def hijack(self, m):
        pass

    def undo_hijack(self, m):
        pass

    def apply_circular(self, enable):
        pass

    def clear_comments(self):
        pass

    def get_prompt_lengths(self, text, cond_stage_model):
        from modules import shared

        return shared.sd_model.get_prompt_lengths_on_ui(text)


model_hijack = StableDiffusionModelHijack()
