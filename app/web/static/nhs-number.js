// Checks an NHS number as it is typed (10 digits, Modulus 11 check digit) and says so beside the
// field; the server checks it again on submit (the page works without this script).
const input = document.getElementById('nhs-number')
if (input) {
  const note = document.createElement('p')
  note.id = 'nhs-number-live'
  note.className = 'nhsuk-body-s'
  note.setAttribute('aria-live', 'polite')
  input.insertAdjacentElement('afterend', note)
  const valid = (digits) => {
    if (!/^\d{10}$/.test(digits)) return false
    let sum = 0
    for (let i = 0; i < 9; i++) sum += Number(digits[i]) * (10 - i)
    const check = 11 - (sum % 11)
    return check !== 10 && (check === 11 ? 0 : check) === Number(digits[9])
  }
  input.addEventListener('input', () => {
    const digits = input.value.replace(/\s/g, '')
    if (digits.length < 10) { note.textContent = ''; input.removeAttribute('aria-invalid'); return }
    const ok = valid(digits)
    note.textContent = ok ? 'This is a valid NHS number.' : 'This is not a valid NHS number: check the digits.'
    if (ok) input.removeAttribute('aria-invalid'); else input.setAttribute('aria-invalid', 'true')
  })
}
