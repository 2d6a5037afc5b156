package auditlog

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// The canonical encoding is RFC 8785 (JSON Canonicalization Scheme) over the
// subset of JSON this package writes: objects, strings, integers and
// booleans (no floats, no null, no arrays). In that subset JCS means:
//
//   - no whitespace anywhere;
//   - object members sorted by their names compared as UTF-16 code units;
//   - strings in UTF-8, escaping only '"' as \", '\' as \\, U+0008 \b,
//     U+0009 \t, U+000A \n, U+000C \f, U+000D \r and the other code points
//     below U+0020 as \u00xx (lowercase hex); everything else literal
//     (including '<', '>', '&', U+2028 and U+2029, which encoding/json
//     would escape);
//   - integers in plain decimal, within ±(2^53-1) so every JSON reader
//     keeps them exact.

// maxSafeInt is 2^53-1, the largest integer an IEEE double holds exactly.
const maxSafeInt = 1<<53 - 1

// Canonical returns the JCS encoding of v, which must be built from
// map[string]any, string, bool and integer types.
func Canonical(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := encode(&b, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func encode(b *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case string:
		return encodeString(b, x)
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case int:
		return encodeInt(b, int64(x))
	case int64:
		return encodeInt(b, x)
	case uint64:
		if x > maxSafeInt {
			return fmt.Errorf("%w: integer %d exceeds 2^53-1", ErrFormat, x)
		}
		b.WriteString(strconv.FormatUint(x, 10))
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareUTF16)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := encodeString(b, k); err != nil {
				return err
			}
			b.WriteByte(':')
			if err := encode(b, x[k]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case map[string]string:
		m := make(map[string]any, len(x))
		for k, s := range x {
			m[k] = s
		}
		return encode(b, m)
	default:
		return fmt.Errorf("%w: cannot encode %T", ErrFormat, v)
	}
	return nil
}

func encodeInt(b *bytes.Buffer, n int64) error {
	if n > maxSafeInt || n < -maxSafeInt {
		return fmt.Errorf("%w: integer %d exceeds 2^53-1", ErrFormat, n)
	}
	b.WriteString(strconv.FormatInt(n, 10))
	return nil
}

const hexDigits = "0123456789abcdef"

func encodeString(b *bytes.Buffer, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: string is not valid UTF-8", ErrFormat)
	}
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			b.WriteString(`\"`)
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\b':
			b.WriteString(`\b`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\f':
			b.WriteString(`\f`)
		case c == '\r':
			b.WriteString(`\r`)
		case c < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return nil
}

// compareUTF16 orders strings by their UTF-16 code units, as JCS requires
// (it differs from byte order only for code points above U+FFFF against
// U+E000..U+FFFF).
func compareUTF16(a, b string) int {
	if !hasSupplementary(a) && !hasSupplementary(b) {
		// Below U+10000 UTF-16 code units, code points and UTF-8 bytes
		// all sort alike.
		return strings.Compare(a, b)
	}
	ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
	return slices.Compare(ua, ub)
}

// hasSupplementary reports whether s holds a code point above U+FFFF (a
// 4-byte UTF-8 sequence).
func hasSupplementary(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0xF0 {
			return true
		}
	}
	return false
}
