from conftest import assert_identical, snapshot


def test_apply_revert_roundtrip(lab):
    mod = lab.module(
        "shop",
        """
        def price(x, rate=2):
            return x * rate
    """,
    )
    before = snapshot(mod.price, mod)
    name = lab.load("""
        import pylivepatch as lp
        patch = lp.Patch("fix", consistency="atomic")
        @patch.function("{m}shop:price")
        def price(x, rate=3):
            return x * rate + 1
    """)
    assert mod.price(2) == 7
    lab.engine.revert(name)
    assert mod.price(2) == 4
    assert_identical(before, snapshot(mod.price, mod))
