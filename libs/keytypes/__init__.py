"""Key types the HSM cannot hold natively, kept as sealed material ("hsm-wrapped").

`sealed` is the only module that talks to a token; `hd`, `mldsa`, `lms` and
`lms_state` are pure and work on material the caller has just unsealed.
"""
