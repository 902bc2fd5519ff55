package pipeline

import (
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"
)

// AppendRowJSON appends row as a JSON object with its keys in sorted order (only
// cols, when cols is not nil). It writes the same bytes encoding/json would for the
// value types rows hold (strings, json.Number, booleans, integers, floats, nil),
// without reflection; anything else goes through encoding/json. Rows are encoded
// twice per event on the hot path (for the payload hash and for the target's
// upsert), which made encoding/json's map encoder a tenth of the CPU.
func AppendRowJSON(buf []byte, row map[string]any, cols []string) ([]byte, error) {
	if cols == nil {
		cols = make([]string, 0, len(row))
		for k := range row {
			cols = append(cols, k)
		}
		slices.Sort(cols)
	}
	buf = append(buf, '{')
	for i, k := range cols {
		var err error
		if buf, err = appendMember(buf, i, k, row[k]); err != nil {
			return nil, err
		}
	}
	return append(buf, '}'), nil
}

// appendMember appends the i-th member of an object, k: v.
func appendMember(buf []byte, i int, k string, v any) ([]byte, error) {
	if i > 0 {
		buf = append(buf, ',')
	}
	buf = appendString(buf, k)
	buf = append(buf, ':')
	return appendValue(buf, v)
}

// SortedRowJSON writes what AppendRowJSON writes with cols nil (the keys
// sorted), into a buffer of its own that it reuses, and keeps the sorted keys of
// the last row: the rows of one entity nearly always have the same fields, and
// sorting them was a third of the encoding. Not safe for concurrent use.
type SortedRowJSON struct {
	buf  []byte
	keys []string
}

// Encode returns row's JSON, valid until the next call.
func (s *SortedRowJSON) Encode(row map[string]any) ([]byte, error) {
	if len(row) == len(s.keys) {
		// Every one of the last row's keys, as many as row has, is in row: the
		// same keys, in the same sorted order.
		buf := append(s.buf[:0], '{')
		for i, k := range s.keys {
			v, ok := row[k]
			if !ok {
				buf = nil
				break
			}
			var err error
			if buf, err = appendMember(buf, i, k, v); err != nil {
				return nil, err
			}
		}
		if buf != nil {
			s.buf = append(buf, '}')
			return s.buf, nil
		}
	}
	s.keys = s.keys[:0]
	for k := range row {
		s.keys = append(s.keys, k)
	}
	slices.Sort(s.keys)
	buf, err := AppendRowJSON(s.buf[:0], row, s.keys)
	if err != nil {
		return nil, err
	}
	s.buf = buf
	return buf, nil
}

func appendValue(buf []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(buf, "null"...), nil
	case string:
		return appendString(buf, x), nil
	case json.Number:
		if x == "" {
			return append(buf, '0'), nil
		}
		if !json.Valid([]byte(x)) {
			return nil, &json.UnsupportedValueError{Str: string(x)}
		}
		return append(buf, x...), nil
	case bool:
		return strconv.AppendBool(buf, x), nil
	case int64:
		return strconv.AppendInt(buf, x, 10), nil
	case int:
		return strconv.AppendInt(buf, int64(x), 10), nil
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return nil, err
		}
		return append(buf, b...), nil
	}
}

const hex = "0123456789abcdef"

// jsonSafe holds the ASCII bytes appendString copies as they are.
var jsonSafe = func() (safe [utf8.RuneSelf]bool) {
	for b := byte(0x20); b < utf8.RuneSelf; b++ {
		safe[b] = b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return safe
}()

// appendString writes s as encoding/json does (HTML-safe escaping included, so the
// bytes, and therefore payload hashes, match).
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch b {
			case '\\', '"':
				buf = append(buf, '\\', b)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
