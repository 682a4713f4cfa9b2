"""Stand-in for Forge's backend/loader.py: ``forge_loader(sd)`` builds the engine class the state dict is
recognised as. Here the "state dict" is a toy checkpoint's file name (tests/forge_standin/toy_forge_sdxl.py
says which toy each name builds)."""


def forge_loader(sd, additional_state_dicts=None):
    import toy_forge_sdxl

    return toy_forge_sdxl.build_model(sd)
