// The NHS.UK frontend's behaviour (error summary focus, conditional reveals, header menu).
// The pages work without it: every form posts and every reveal is shown when scripts are off.
import { initAll } from './nhsuk/nhsuk-frontend.min.js'
initAll()
