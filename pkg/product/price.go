package product

import (
	"errors"
	"fmt"

	"golang.org/x/text/currency"
)

// Limits of a price: up to 15 integer digits and 6 decimal places, which the
// database checks too (price_amount < 1e15).
const (
	maxPriceIntegerDigits = 15
	maxPriceDecimals      = 6
)

// ErrPriceFormat is wrapped by every error of [ParsePrice] about the shape of
// the text (as opposed to an unknown currency, [ErrUnknownCurrency]).
var ErrPriceFormat = errors.New(`price must be a decimal amount followed by an ISO 4217 currency code, like "500EUR" or "12.50USD"`)

// ErrUnknownCurrency is wrapped by [ParsePrice] when the three letters are not
// an ISO 4217 currency code.
var ErrUnknownCurrency = errors.New("not an ISO 4217 currency code")

// Price is a price per unit: a non-negative decimal amount, kept as the
// digits the client sent (so "12.50" stays "12.50"), and an ISO 4217 code.
type Price struct {
	Amount   string // decimal digits with an optional fraction: "500", "12.50"
	Currency string // three upper-case letters, a recognised ISO 4217 code
}

// String renders the price in the API's form, amount then code: "12.50EUR".
func (p Price) String() string { return p.Amount + p.Currency }

// ParsePrice parses the API's price form, "<decimal><ISO 4217 code>": an
// amount of 1 to 15 integer digits without leading zeros ("0" alone is
// allowed), an optional "." with 1 to 6 digits, then a recognised currency
// code in upper case. No sign, spaces, exponent or grouping are accepted.
func ParsePrice(s string) (Price, error) {
	if len(s) < 4 {
		return Price{}, fmt.Errorf("%q: %w", s, ErrPriceFormat)
	}
	amount, code := s[:len(s)-3], s[len(s)-3:]
	for i := 0; i < len(code); i++ {
		if code[i] < 'A' || code[i] > 'Z' {
			return Price{}, fmt.Errorf("%q: %w", s, ErrPriceFormat)
		}
	}
	if err := checkAmount(amount); err != nil {
		return Price{}, fmt.Errorf("%q: %w", s, err)
	}
	if _, err := currency.ParseISO(code); err != nil {
		return Price{}, fmt.Errorf("%q: %s is %w", s, code, ErrUnknownCurrency)
	}
	return Price{Amount: amount, Currency: code}, nil
}

// checkAmount validates the decimal part of a price.
func checkAmount(amount string) error {
	integer, fraction, hasPoint := amount, "", false
	for i := 0; i < len(amount); i++ {
		if amount[i] == '.' {
			integer, fraction, hasPoint = amount[:i], amount[i+1:], true
			break
		}
	}
	switch {
	case integer == "" || !allDigits(integer):
		return ErrPriceFormat
	case len(integer) > 1 && integer[0] == '0':
		return fmt.Errorf("leading zeros: %w", ErrPriceFormat)
	case len(integer) > maxPriceIntegerDigits:
		return fmt.Errorf("more than %d integer digits: %w", maxPriceIntegerDigits, ErrPriceFormat)
	case hasPoint && (fraction == "" || !allDigits(fraction)):
		return ErrPriceFormat
	case len(fraction) > maxPriceDecimals:
		return fmt.Errorf("more than %d decimal places: %w", maxPriceDecimals, ErrPriceFormat)
	}
	return nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
