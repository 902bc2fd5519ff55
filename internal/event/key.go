package event

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// KeyValue returns the canonical text of one business-key value, or false when the
// value cannot be part of a key (null, empty, or a nested object or array).
//
// Strings are trimmed; numbers are written in plain decimal without exponent,
// leading zeros or trailing fractional zeros ("10", "10.0" and 1e1 are all "10");
// booleans are "true" or "false". A number and a string with the same text are
// therefore the same key value, so a child that sends its parent's key as a string
// still finds a parent that sent it as a number.
func KeyValue(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		s := strings.TrimSpace(x)
		return s, s != ""
	case json.Number:
		return canonicalNumber(string(x))
	case float64:
		return canonicalNumber(strconv.FormatFloat(x, 'f', -1, 64))
	case int64:
		return strconv.FormatInt(x, 10), true
	case int:
		return strconv.Itoa(x), true
	case bool:
		return strconv.FormatBool(x), true
	default:
		return "", false
	}
}

func canonicalNumber(s string) (string, bool) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return strconv.FormatInt(n, 10), true
	}
	if CheckNumber(s) != nil {
		return "", false
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return "", false
	}
	if r.IsInt() {
		return r.Num().String(), true
	}
	for digits := 1; digits <= 64; digits++ {
		out := r.FloatString(digits)
		if back, ok := new(big.Rat).SetString(out); ok && back.Cmp(r) == 0 {
			return out, true
		}
	}
	return r.FloatString(64), true
}

// HashKey returns bk_hash, the identity of a row within its entity: the lower-case
// hex SHA-256 of the canonical key values (see KeyValue) in catalog order, each
// written as its byte length in decimal, a colon, and its bytes: ["S1"] hashes
// "2:S1" and ["WO-1", "10"] hashes "4:WO-12:10". The length prefixes make the
// encoding unambiguous. The entity is not part of the hash, so a child computes its
// parent's bk_hash from its own fields. This definition is part of the stored state
// (golden tests pin it): changing it orphans every ledger row.
func HashKey(values []string) string {
	n := 0
	for _, v := range values {
		n += len(v) + 4
	}
	buf := make([]byte, 0, n)
	for _, v := range values {
		buf = append(append(strconv.AppendInt(buf, int64(len(v)), 10), ':'), v...)
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:])
}

// Numbers are capped before anything computes with them: "1e999999" is 8 bytes
// of JSON and a million digits of decimal.
const (
	// MaxNumberLength is the longest number text accepted, in characters.
	MaxNumberLength = 100
	// MaxExponent is the largest exponent magnitude accepted (1e100, 1e-100).
	MaxExponent = 100
)

// CheckNumber refuses a number text longer than MaxNumberLength or with an
// exponent beyond MaxExponent. Text that is not a decimal number ("five") is
// left to the caller, whose own parse says what is wrong with it.
func CheckNumber(s string) error {
	if len(s) > MaxNumberLength {
		return fmt.Errorf("number of %d characters exceeds the limit of %d", len(s), MaxNumberLength)
	}
	mantissa, exp, found := strings.Cut(strings.ToLower(s), "e")
	if !found || !isDecimal(strings.TrimLeft(mantissa, "+-")) {
		return nil
	}
	n, err := strconv.Atoi(strings.TrimPrefix(exp, "+"))
	if err != nil {
		if isDigits(strings.TrimLeft(exp, "+-")) {
			return fmt.Errorf("number %s has an exponent beyond ±%d", s, MaxExponent) // too many digits for an int
		}
		return nil
	}
	if n > MaxExponent || n < -MaxExponent {
		return fmt.Errorf("number %s has an exponent beyond ±%d", s, MaxExponent)
	}
	return nil
}

// isDecimal reports whether s is digits with at most one decimal point.
func isDecimal(s string) bool {
	whole, frac, _ := strings.Cut(s, ".")
	return (whole != "" || frac != "") && (whole == "" || isDigits(whole)) && (frac == "" || isDigits(frac))
}
