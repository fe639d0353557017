package dev.celeriac.interop;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.Collection;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * Python's text formats for the plain values a task message carries (null, booleans, integers,
 * floats, strings, lists and string-keyed maps): {@code json.dumps} with its defaults, which is
 * what kombu's JSON serializer writes (separators {@code ", "} and {@code ": "}, {@code
 * ensure_ascii}), and {@code repr}, which Celery uses for the {@code argsrepr}/{@code kwargsrepr}
 * headers.
 */
public final class PyFormat {
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private PyFormat() {}

    /** {@code json.dumps(value)}: the exact bytes kombu's JSON serializer produces. */
    public static String dumps(Object value) {
        StringBuilder out = new StringBuilder();
        writeJson(out, value);
        return out.toString();
    }

    /** {@code repr(value)}; lists are Python lists. */
    public static String repr(Object value) {
        StringBuilder out = new StringBuilder();
        writeRepr(out, value);
        return out.toString();
    }

    /** {@code repr(tuple(values))}: {@code ()}, {@code (1,)}, {@code (1, 2)}. */
    public static String reprTuple(List<?> values) {
        StringBuilder out = new StringBuilder("(");
        joinRepr(out, values);
        if (values.size() == 1) {
            out.append(',');
        }
        return out.append(')').toString();
    }

    private static void writeJson(StringBuilder out, Object value) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof Boolean b) {
            out.append(b ? "true" : "false");
        } else if (value instanceof Double || value instanceof Float) {
            double d = ((Number) value).doubleValue();
            if (Double.isNaN(d)) {
                out.append("NaN");
            } else if (Double.isInfinite(d)) {
                out.append(d > 0 ? "Infinity" : "-Infinity");
            } else {
                out.append(pyFloat(d));
            }
        } else if (value instanceof Number n) {
            out.append(integerText(n));
        } else if (value instanceof CharSequence s) {
            jsonString(out, s.toString());
        } else if (value instanceof Map<?, ?> map) {
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : map.entrySet()) {
                if (!first) {
                    out.append(", ");
                }
                first = false;
                jsonString(out, String.valueOf(e.getKey()));
                out.append(": ");
                writeJson(out, e.getValue());
            }
            out.append('}');
        } else if (value instanceof Collection<?> items) {
            out.append('[');
            boolean first = true;
            for (Object item : items) {
                if (!first) {
                    out.append(", ");
                }
                first = false;
                writeJson(out, item);
            }
            out.append(']');
        } else {
            throw new IllegalArgumentException("not a JSON value: " + value.getClass().getName());
        }
    }

    private static String integerText(Number n) {
        if (n instanceof BigDecimal d) {
            return d.toPlainString();
        }
        if (n instanceof BigInteger || n instanceof Long || n instanceof Integer
                || n instanceof Short || n instanceof Byte) {
            return n.toString();
        }
        throw new IllegalArgumentException("unsupported number type: " + n.getClass().getName());
    }

    /** ensure_ascii: everything outside printable ASCII is a lowercase \\uXXXX escape (UTF-16 units). */
    private static void jsonString(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                case '\b' -> out.append("\\b");
                case '\f' -> out.append("\\f");
                default -> {
                    if (c < 0x20 || c > 0x7e) {
                        out.append("\\u").append(HEX[(c >> 12) & 15]).append(HEX[(c >> 8) & 15])
                                .append(HEX[(c >> 4) & 15]).append(HEX[c & 15]);
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }

    /** Python's float repr: shortest round-trip digits, scientific below 1e-4 and from 1e16. */
    static String pyFloat(double d) {
        if (d == 0) {
            return (1 / d < 0) ? "-0.0" : "0.0";
        }
        BigDecimal exact = new BigDecimal(Double.toString(d)).stripTrailingZeros();
        String digits = exact.unscaledValue().abs().toString();
        // value = 0.digits * 10^exp10 ... normalise to d.ddd * 10^e
        int e = digits.length() - 1 - exact.scale();
        String sign = d < 0 ? "-" : "";
        if (e < -4 || e >= 16) {
            String mantissa = digits.length() == 1 ? digits : digits.charAt(0) + "." + digits.substring(1);
            return sign + mantissa + "e" + (e < 0 ? "-" : "+") + (Math.abs(e) < 10 ? "0" : "") + Math.abs(e);
        }
        String plain = exact.abs().toPlainString();
        return sign + (plain.contains(".") ? plain : plain + ".0");
    }

    private static void writeRepr(StringBuilder out, Object value) {
        if (value == null) {
            out.append("None");
        } else if (value instanceof Boolean b) {
            out.append(b ? "True" : "False");
        } else if (value instanceof Double || value instanceof Float) {
            double d = ((Number) value).doubleValue();
            out.append(Double.isNaN(d) ? "nan" : Double.isInfinite(d) ? (d > 0 ? "inf" : "-inf") : pyFloat(d));
        } else if (value instanceof Number n) {
            out.append(integerText(n));
        } else if (value instanceof CharSequence s) {
            reprString(out, s.toString());
        } else if (value instanceof Map<?, ?> map) {
            out.append('{');
            Iterator<? extends Map.Entry<?, ?>> it = map.entrySet().iterator();
            while (it.hasNext()) {
                Map.Entry<?, ?> e = it.next();
                writeRepr(out, e.getKey());
                out.append(": ");
                writeRepr(out, e.getValue());
                if (it.hasNext()) {
                    out.append(", ");
                }
            }
            out.append('}');
        } else if (value instanceof Collection<?> items) {
            out.append('[');
            joinRepr(out, items);
            out.append(']');
        } else {
            throw new IllegalArgumentException("no Python repr for " + value.getClass().getName());
        }
    }

    private static void joinRepr(StringBuilder out, Collection<?> items) {
        boolean first = true;
        for (Object item : items) {
            if (!first) {
                out.append(", ");
            }
            first = false;
            writeRepr(out, item);
        }
    }

    /** str.__repr__: single quotes unless the text has ' and no ". */
    private static void reprString(StringBuilder out, String s) {
        char quote = s.indexOf('\'') >= 0 && s.indexOf('"') < 0 ? '"' : '\'';
        out.append(quote);
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == quote || c == '\\') {
                out.append('\\').append(c);
            } else if (c == '\n') {
                out.append("\\n");
            } else if (c == '\r') {
                out.append("\\r");
            } else if (c == '\t') {
                out.append("\\t");
            } else if (c < 0x20 || c == 0x7f) {
                out.append("\\x").append(HEX[(c >> 4) & 15]).append(HEX[c & 15]);
            } else {
                out.append(c);
            }
        }
        out.append(quote);
    }
}
