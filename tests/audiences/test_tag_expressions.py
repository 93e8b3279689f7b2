"""Tag expressions written with Chinese operators."""


def test_chinese_keywords_read_as_and_or_not() -> None:
    from audiences.tag_expressions import parse_tag_expr

    expr = parse_tag_expr("春季班 且 非 已购买")
    assert expr.matches({"春季班"}) and not expr.matches({"春季班", "已购买"})
    assert str(expr) == "春季班 and not 已购买"
    either = parse_tag_expr("(甲 或 乙) 且 丙")
    assert either.matches({"乙", "丙"}) and not either.matches({"甲"})
    # a tag named like an operator is quoted, and round-trips
    quoted = parse_tag_expr('"非" and 甲')
    assert quoted.matches({"非", "甲"}) and str(quoted) == '"非" and 甲'
    assert parse_tag_expr(str(quoted)).matches({"非", "甲"})
